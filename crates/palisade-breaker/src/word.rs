//! The encoding of the breaker's state word and probe-slot word: plain
//! arithmetic on `u64`, kept apart from the atomics that carry them.

use crate::state::State;

// The state word packs the state (low 3 bits) with a generation that grows on
// every transition. A permit remembers the word it was admitted under, and its
// outcome is recorded only if the word is unchanged: an outcome from a closed
// period that has since ended (or from an earlier half-open round) can never
// pollute the current one.
const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

pub(crate) const fn pack(state: State, generation: u64) -> u64 {
    (generation << STATE_BITS) | state.code()
}

pub(crate) const fn state_of(word: u64) -> State {
    State::from_code(word & STATE_MASK)
}

pub(crate) const fn generation_of(word: u64) -> u64 {
    word >> STATE_BITS
}

// Half-open probe slots: the low 32 bits of the generation (high half) and
// the number of slots taken (low half), so a late release from an earlier
// half-open round can never free a slot of the current one.
pub(crate) const fn probes_word(generation: u64, taken: u64) -> u64 {
    ((generation & 0xFFFF_FFFF) << 32) | taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_probe_words_keep_their_round() {
        for state in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
        ] {
            for generation in [0, 1, 7, u64::MAX >> STATE_BITS] {
                let word = pack(state, generation);
                assert_eq!(state_of(word), state);
                assert_eq!(generation_of(word), generation);
            }
        }
        // Only the low 32 bits of the generation tag a probe word.
        assert_eq!(probes_word(3, 2), (3 << 32) | 2);
        assert_eq!(probes_word((1 << 32) + 3, 0), 3 << 32);
    }
}
