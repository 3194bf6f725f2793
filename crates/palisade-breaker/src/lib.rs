//! palisade-breaker (being built; see its issue).
