//! Redis backend (feature `redis`): one limit shared by a fleet.
