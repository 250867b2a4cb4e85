//! Streaming split of the model's output into thought and answer, as tokens arrive.
//!
//! The thought is whatever comes between the first `<think>` and the first `</think>` after it;
//! everything else is answer, and tags after that are literal text (as the Python chat's
//! `ThoughtSplitter`). A tag may arrive as a special token (its id) or as ordinary text spelled
//! out over several tokens, so text that could be the start of the awaited tag is held back until
//! it is decided. Bytes are held back too until they form whole UTF-8 characters, so every delta
//! is valid text.

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Thought,
    Answer,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// no `<think>` yet: answer text, waiting for the tag
    #[default]
    Before,
    Thought,
    /// after `</think>`: answer only
    After,
}

#[derive(Debug, Default)]
pub struct ThinkParser {
    state: State,
    /// undecided text: a possible partial tag
    pending: String,
    /// bytes of an unfinished UTF-8 character
    bytes: Vec<u8>,
}

impl ThinkParser {
    pub fn new() -> ThinkParser {
        ThinkParser::default()
    }

    /// A parser for a reply whose prompt already opened the thought (a generation prompt that
    /// ends with `<think>`, as DeepSeek-R1's does).
    pub fn inside_thought() -> ThinkParser {
        ThinkParser { state: State::Thought, ..ThinkParser::default() }
    }

    /// Whether `prompt`'s last tag opens a thought.
    pub fn opens_thought(prompt: &str) -> bool {
        prompt.rfind(OPEN).map_or(false, |o| prompt.rfind(CLOSE).map_or(true, |c| o > c))
    }

    pub fn in_thought(&self) -> bool {
        self.state == State::Thought
    }

    /// A `<think>` / `</think>` special token arrived: the same as its text (after any
    /// unfinished character, which it ends).
    pub fn tag(&mut self, open: bool) -> Vec<(Part, String)> {
        self.bytes(if open { OPEN } else { CLOSE }.as_bytes())
    }

    /// Bytes of an ordinary token arrived; returns the pieces now decided, in order.
    pub fn bytes(&mut self, b: &[u8]) -> Vec<(Part, String)> {
        self.bytes.extend_from_slice(b);
        // whole characters only; an invalid sequence becomes one U+FFFD (as a lossy decode does),
        // an unfinished one at the end waits for the next token
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.bytes) {
                Ok(s) => {
                    text.push_str(s);
                    self.bytes.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.bytes[..valid]).unwrap_or(""));
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            self.bytes.drain(..valid + n);
                        }
                        None => {
                            self.bytes.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        self.text(&text)
    }

    /// Everything still held back (call at the end of a turn).
    pub fn finish(&mut self) -> Vec<(Part, String)> {
        let mut out = Vec::new();
        if !self.bytes.is_empty() {
            let rest = String::from_utf8_lossy(&self.bytes).into_owned();
            self.bytes.clear();
            self.pending.push_str(&rest);
        }
        out.extend(self.flush_text());
        out.retain(|(_, s)| !s.is_empty());
        out
    }

    fn part(&self) -> Part {
        if self.state == State::Thought {
            Part::Thought
        } else {
            Part::Answer
        }
    }

    fn flush_text(&mut self) -> Vec<(Part, String)> {
        let p = std::mem::take(&mut self.pending);
        vec![(self.part(), p)]
    }

    fn text(&mut self, s: &str) -> Vec<(Part, String)> {
        self.pending.push_str(s);
        let mut out: Vec<(Part, String)> = Vec::new();
        loop {
            let tag = match self.state {
                State::Before => OPEN,
                State::Thought => CLOSE,
                State::After => {
                    let rest = std::mem::take(&mut self.pending);
                    push(&mut out, Part::Answer, rest);
                    return out;
                }
            };
            if let Some(at) = self.pending.find(tag) {
                let before = self.pending[..at].to_string();
                push(&mut out, self.part(), before);
                self.pending.drain(..at + tag.len());
                self.state = if self.state == State::Before { State::Thought } else { State::After };
                continue;
            }
            // hold back the longest suffix that is a proper prefix of the tag
            let mut keep = 0;
            for k in (1..tag.len()).rev() {
                if self.pending.len() >= k && self.pending.is_char_boundary(self.pending.len() - k) && tag.starts_with(&self.pending[self.pending.len() - k..]) {
                    keep = k;
                    break;
                }
            }
            let cut = self.pending.len() - keep;
            let done: String = self.pending.drain(..cut).collect();
            push(&mut out, self.part(), done);
            return out;
        }
    }
}

fn push(out: &mut Vec<(Part, String)>, part: Part, s: String) {
    if s.is_empty() {
        return;
    }
    match out.last_mut() {
        Some((p, prev)) if *p == part => prev.push_str(&s),
        _ => out.push((part, s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]]) -> (String, String) {
        let mut p = ThinkParser::new();
        let (mut thought, mut answer) = (String::new(), String::new());
        let mut all = Vec::new();
        for b in pieces {
            all.extend(p.bytes(b));
        }
        all.extend(p.finish());
        for (part, s) in all {
            if part == Part::Thought { thought.push_str(&s) } else { answer.push_str(&s) }
        }
        (thought, answer)
    }

    #[test]
    fn text_tags_split_anywhere() {
        let full = "<think>2+2 is 4</think>It is 4.";
        for cut in 0..full.len() {
            let (a, b) = full.as_bytes().split_at(cut);
            assert_eq!(run(&[a, b]), ("2+2 is 4".to_string(), "It is 4.".to_string()), "cut {}", cut);
        }
        let one_by_one: Vec<&[u8]> = full.as_bytes().chunks(1).collect();
        assert_eq!(run(&one_by_one), ("2+2 is 4".to_string(), "It is 4.".to_string()));
    }

    #[test]
    fn utf8_held_until_whole_and_near_misses_pass() {
        let s = "é<thin>k ü";
        let pieces: Vec<&[u8]> = s.as_bytes().chunks(1).collect();
        assert_eq!(run(&pieces), (String::new(), s.to_string()));
    }

    #[test]
    fn special_token_tags() {
        let mut p = ThinkParser::new();
        assert!(p.tag(true).is_empty());
        assert_eq!(p.bytes(b"hm"), vec![(Part::Thought, "hm".to_string())]);
        assert!(p.tag(false).is_empty());
        assert_eq!(p.bytes(b"ok <"), vec![(Part::Answer, "ok <".to_string())]);
        assert_eq!(p.tag(true), vec![(Part::Answer, "<think>".to_string())]); // after the thought: literal
    }

    #[test]
    fn a_prompt_that_opened_the_thought() {
        assert!(ThinkParser::opens_thought("<|im_start|>assistant\n<think>\n"));
        assert!(!ThinkParser::opens_thought("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!ThinkParser::opens_thought("<|assistant_start|>"));
        let mut p = ThinkParser::inside_thought();
        let mut all = p.bytes(b"hm</think>ok");
        all.extend(p.finish());
        assert_eq!(all, vec![(Part::Thought, "hm".to_string()), (Part::Answer, "ok".to_string())]);
    }

    #[test]
    fn stray_close_before_open_is_answer_text() {
        assert_eq!(run(&[b"a</think>b<think>c</think>d"]), ("c".to_string(), "a</think>bd".to_string()));
    }
}
