//! palisade-shutdown (being built; see its issue).
