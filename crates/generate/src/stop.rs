//! Stop strings: generation ends where one appears, and text that might be the start of
//! one is held back from the stream until it is known not to be.

/// Watches generated text for stop strings.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
}

/// What the matcher says about the text so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopState {
    /// A stop string starts at this byte offset: keep the text before it and stop.
    Stopped(usize),
    /// No stop string; bytes up to this offset are safe to show.
    Running(usize),
}

impl StopMatcher {
    /// A matcher for these strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Checks the whole generated `text`.
    pub fn check(&self, text: &str) -> StopState {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            return StopState::Stopped(at);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut safe = text.len();
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if text.ends_with(&s[..i]) {
                    safe = safe.min(text.len() - i);
                }
            }
        }
        StopState::Running(safe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_earliest_match() {
        let m = StopMatcher::new(&["\n\n".into(), "User:".into()]);
        assert_eq!(m.check("Hi User: x\n\n"), StopState::Stopped(3));
    }

    #[test]
    fn holds_back_a_possible_prefix() {
        let m = StopMatcher::new(&["User:".into()]);
        assert_eq!(m.check("Hello Us"), StopState::Running(6));
        assert_eq!(m.check("Hello"), StopState::Running(5));
        assert_eq!(StopMatcher::new(&[]).check("abc"), StopState::Running(3));
    }
}
