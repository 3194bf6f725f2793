//! palisade-ratelimit (being built; see its issue).
