//! A small backtracking regex engine for pre-tokenizer split patterns, with Oniguruma's semantics
//! (the engine the `tokenizers` library splits with): alternatives tried in order, the first that
//! lets the whole pattern match wins; greedy quantifiers give back one char at a time.
//!
//! Covered: literals and escapes (`\r \n \t \f \v \a \e`, `\xHH`, `\x{H..}`, `\uHHHH`, escaped
//! punctuation), `.` (any char but `\n`), classes `[...]` / `[^...]` with ranges, `\s \S \d \D`,
//! `\p{..}` / `\P{..}` / `\p{^..}` over general categories (`L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl
//! No P.. S.. Z.. C..`), groups `(..)` `(?:..)` `(?i:..)` `(?>..)`, lookahead `(?=..)` `(?!..)`,
//! quantifiers `? * + {m} {m,} {m,n}`, lazy (`??` ...) and possessive (`?+ *+ ++`). `\s` is the
//! White_Space property, `\d` is Nd, as in Oniguruma; a class nested in a class is a union with it.
//! Case-insensitive matching uses simple case folding (one char to one char). Anything else
//! (anchors, lookbehind, back-references, `\w`, negated nested classes, a case-insensitive string
//! Oniguruma would match by a multi-char fold such as "ss" against "ß", ...) is refused, naming
//! the construct.

use crate::pretokenize::class_of;
use crate::unicode_tables::{CharClass, CASE_FOLDS, CATEGORY_NAMES, CATEGORY_STARTS, MULTI_FOLDS};

/// Repetition is compiled by copying its body; beyond this many instructions a pattern is refused.
const MAX_PROGRAM: usize = 1 << 16;

/// The general category of `c`, as an index into `CATEGORY_NAMES`.
pub fn category(c: char) -> usize {
    let key = (c as u32) << 5 | 31;
    let i = CATEGORY_STARTS.partition_point(|&start| start <= key);
    (CATEGORY_STARTS[i - 1] & 31) as usize
}

fn simple_fold(c: u32) -> u32 {
    match CASE_FOLDS.binary_search_by_key(&c, |&(from, _)| from) {
        Ok(i) => CASE_FOLDS[i].1,
        Err(_) => c,
    }
}

#[derive(Clone, Debug)]
enum Item {
    Range(u32, u32),
    /// A set of general categories (bit i = `CATEGORY_NAMES[i]`), or its complement.
    Categories(u32, bool),
    /// White_Space, or its complement.
    Space(bool),
}

impl Item {
    fn matches(&self, c: char) -> bool {
        match *self {
            Item::Range(lo, hi) => (lo..=hi).contains(&(c as u32)),
            Item::Categories(mask, negated) => (mask >> category(c) & 1 == 1) != negated,
            Item::Space(negated) => (class_of(c) == CharClass::Whitespace) != negated,
        }
    }
}

/// One char's test: any of the items matches (or, negated, none does). ASCII is a bitmap.
#[derive(Clone, Debug)]
struct CharSet {
    items: Vec<Item>,
    negated: bool,
    ascii: u128,
}

impl CharSet {
    fn new(items: Vec<Item>, negated: bool) -> CharSet {
        let mut set = CharSet { items, negated, ascii: 0 };
        for b in 0..128u8 {
            if set.slow_matches(b as char) {
                set.ascii |= 1 << b;
            }
        }
        set
    }

    fn slow_matches(&self, c: char) -> bool {
        self.items.iter().any(|item| item.matches(c)) != self.negated
    }

    #[inline]
    fn matches(&self, c: char) -> bool {
        if (c as u32) < 128 {
            return self.ascii >> (c as u32) & 1 == 1;
        }
        self.slow_matches(c)
    }
}

#[derive(Clone, Debug)]
enum Node {
    Set(CharSet),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat { node: Box<Node>, min: u32, max: Option<u32>, lazy: bool },
    Atomic(Box<Node>),
    Look { node: Box<Node>, negated: bool },
}

impl Node {
    /// Whether the node can match without consuming a char.
    fn nullable(&self) -> bool {
        match self {
            Node::Set(_) => false,
            Node::Concat(nodes) => nodes.iter().all(Node::nullable),
            Node::Alt(nodes) => nodes.iter().any(Node::nullable),
            Node::Repeat { node, min, .. } => *min == 0 || node.nullable(),
            Node::Atomic(node) => node.nullable(),
            Node::Look { .. } => true,
        }
    }
}

struct Parser<'p> {
    pattern: &'p str,
    chars: Vec<char>,
    at: usize,
}

type Parsed<T> = Result<T, String>;

impl<'p> Parser<'p> {
    fn error(&self, what: &str) -> String {
        format!("unsupported split pattern {:?}: {} (at char {}) is not supported", self.pattern, what, self.at)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn next(&mut self, context: &str) -> Parsed<char> {
        let c = self.peek().ok_or_else(|| self.error(&format!("a pattern that ends inside {}", context)))?;
        self.at += 1;
        Ok(c)
    }

    fn alternation(&mut self, fold: bool) -> Parsed<Node> {
        let mut branches = vec![self.concat(fold)?];
        while self.eat('|') {
            branches.push(self.concat(fold)?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap() } else { Node::Alt(branches) })
    }

    fn concat(&mut self, fold: bool) -> Parsed<Node> {
        let mut nodes = Vec::new();
        let mut literal_run = String::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let (atom, literal) = self.atom(fold)?;
            let node = self.quantified(atom)?;
            match (literal, &node) {
                (Some(c), Node::Set(_)) if fold => {
                    literal_run.extend(char::from_u32(simple_fold(c as u32)));
                    if let Some(multi) = MULTI_FOLDS.iter().find(|m| literal_run.ends_with(*m)) {
                        return Err(self.error(&format!("the case-insensitive string {:?} (Oniguruma also matches the char that folds to it)", multi)));
                    }
                }
                _ => literal_run.clear(),
            }
            nodes.push(node);
        }
        Ok(if nodes.len() == 1 { nodes.pop().unwrap() } else { Node::Concat(nodes) })
    }

    fn number(&mut self) -> Option<u32> {
        let from = self.at;
        while matches!(self.peek(), Some('0'..='9')) {
            self.at += 1;
        }
        self.chars[from..self.at].iter().collect::<String>().parse().ok()
    }

    fn quantified(&mut self, mut node: Node) -> Parsed<Node> {
        loop {
            let (min, max) = match self.peek() {
                Some('{') => self.counted()?,
                Some(c @ ('?' | '*' | '+')) => {
                    self.at += 1;
                    (if c == '+' { 1 } else { 0 }, if c == '?' { Some(1) } else { None })
                }
                _ => return Ok(node),
            };
            if node.nullable() && max.map_or(true, |m| m > 1) {
                return Err(self.error("a repeat of something that can match the empty string"));
            }
            let lazy = self.eat('?');
            let possessive = !lazy && self.eat('+');
            node = Node::Repeat { node: Box::new(node), min, max, lazy };
            if possessive {
                node = Node::Atomic(Box::new(node));
            }
        }
    }

    /// `{m}`, `{m,}` or `{m,n}`, consumed.
    fn counted(&mut self) -> Parsed<(u32, Option<u32>)> {
        let from = self.at;
        self.at += 1;
        let min = self.number().ok_or_else(|| self.error("a '{' that does not start {m}, {m,} or {m,n}"))?;
        let max = if self.eat(',') { self.number() } else { Some(min) };
        if !self.eat('}') || max.map_or(false, |max| max < min) {
            self.at = from;
            return Err(self.error("a malformed counted repeat"));
        }
        if self.peek() == Some('+') {
            return Err(self.error("a counted repeat followed by '+' (Oniguruma's Ruby syntax reads it as a nested repeat)"));
        }
        Ok((min, max))
    }

    /// One atom, and the char when it is a single literal char.
    fn atom(&mut self, fold: bool) -> Parsed<(Node, Option<char>)> {
        let c = self.next("an atom")?;
        let literal = |c: char| (Node::Set(literal_set(c, fold)), Some(c));
        match c {
            '(' => Ok((self.group(fold)?, None)),
            '[' => Ok((Node::Set(self.class(fold)?), None)),
            '.' => Ok((Node::Set(CharSet::new(vec![Item::Range('\n' as u32, '\n' as u32)], true)), None)),
            '\\' => match self.escape(fold, false)? {
                Escape::Char(c) => Ok(literal(c)),
                Escape::Item(item) => Ok((Node::Set(CharSet::new(vec![item], false)), None)),
            },
            '^' | '$' => Err(self.error(&format!("the anchor {:?}", c))),
            '?' | '*' | '+' | '{' => Err(self.error(&format!("a quantifier {:?} with nothing to repeat", c))),
            _ => Ok(literal(c)),
        }
    }

    fn group(&mut self, fold: bool) -> Parsed<Node> {
        let mut inner_fold = fold;
        let mut wrap: Option<fn(Node) -> Node> = None;
        if self.eat('?') {
            match self.next("a group")? {
                ':' => {}
                '>' => wrap = Some(|n| Node::Atomic(Box::new(n))),
                '=' => wrap = Some(|n| Node::Look { node: Box::new(n), negated: false }),
                '!' => wrap = Some(|n| Node::Look { node: Box::new(n), negated: true }),
                'i' if self.eat(':') => inner_fold = true,
                '<' if matches!(self.peek(), Some('=') | Some('!')) => return Err(self.error("lookbehind")),
                other => return Err(self.error(&format!("the group kind (?{}", other))),
            }
        }
        let node = self.alternation(inner_fold)?;
        if !self.eat(')') {
            return Err(self.error("an unclosed group"));
        }
        Ok(match wrap {
            Some(wrap) => wrap(node),
            None => node,
        })
    }

    fn class(&mut self, fold: bool) -> Parsed<CharSet> {
        let negated = self.eat('^');
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.next("a class")?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = match c {
                '[' if self.peek() == Some(':') => return Err(self.error("a POSIX bracket")),
                '[' => {
                    // a nested class is a union with the enclosing one (Bloom's [^(\s|[.,!?])])
                    let inner = self.class(fold)?;
                    if inner.negated {
                        return Err(self.error("a negated nested class"));
                    }
                    items.extend(inner.items);
                    continue;
                }
                '&' if self.peek() == Some('&') => return Err(self.error("class intersection &&")),
                '\\' => match self.escape(fold, true)? {
                    Escape::Item(item) => {
                        items.push(item);
                        continue;
                    }
                    Escape::Char(c) => c,
                },
                c => c,
            };
            if self.peek() == Some('-') && self.chars.get(self.at + 1).map_or(false, |&c| c != ']') {
                self.at += 1;
                let hi = match self.next("a class range")? {
                    '\\' => match self.escape(fold, true)? {
                        Escape::Char(c) => c,
                        Escape::Item(_) => return Err(self.error("a class range ending in a class")),
                    },
                    '[' => return Err(self.error("a class range ending in a nested class")),
                    c => c,
                };
                if hi < lo {
                    return Err(self.error("a class range out of order"));
                }
                items.push(Item::Range(lo as u32, hi as u32));
            } else {
                items.push(Item::Range(lo as u32, lo as u32));
            }
        }
        if fold {
            add_case_variants(&mut items);
        }
        Ok(CharSet::new(items, negated))
    }

    fn hex(&mut self, digits: usize) -> Parsed<char> {
        let text: String = self.chars.get(self.at..self.at + digits).map(|s| s.iter().collect()).unwrap_or_default();
        self.at += digits;
        u32::from_str_radix(&text, 16).ok().and_then(char::from_u32).ok_or_else(|| self.error("a malformed hex escape"))
    }

    fn escape(&mut self, fold: bool, in_class: bool) -> Parsed<Escape> {
        let c = self.next("an escape")?;
        let item = match c {
            's' | 'S' => Item::Space(c == 'S'),
            'd' | 'D' => Item::Categories(1 << 9, c == 'D'),
            'p' | 'P' => {
                if fold {
                    return Err(self.error("a Unicode category inside (?i:...)"));
                }
                if !self.eat('{') {
                    return Err(self.error("a \\p without {...}"));
                }
                let caret = self.eat('^');
                let mut name = String::new();
                loop {
                    match self.next("\\p{...}")? {
                        '}' => break,
                        c => name.push(c),
                    }
                }
                let mask = category_mask(&name).ok_or_else(|| self.error(&format!("the property \\p{{{}}}", name)))?;
                Item::Categories(mask, (c == 'P') != caret)
            }
            'r' => return Ok(Escape::Char('\r')),
            'n' => return Ok(Escape::Char('\n')),
            't' => return Ok(Escape::Char('\t')),
            'f' => return Ok(Escape::Char('\x0C')),
            'v' => return Ok(Escape::Char('\x0B')),
            'a' => return Ok(Escape::Char('\x07')),
            'e' => return Ok(Escape::Char('\x1B')),
            'x' if self.eat('{') => {
                let from = self.at;
                while self.peek().map_or(false, |c| c != '}') {
                    self.at += 1;
                }
                let len = self.at - from;
                self.at = from;
                let c = self.hex(len)?;
                self.eat('}');
                return Ok(Escape::Char(c));
            }
            'x' => return Ok(Escape::Char(self.hex(2)?)),
            'u' => return Ok(Escape::Char(self.hex(4)?)),
            c if c.is_ascii_alphanumeric() => {
                let what = if in_class { "inside a class" } else { "" };
                return Err(self.error(&format!("the escape \\{} {}", c, what).trim_end().to_string()));
            }
            c => return Ok(Escape::Char(c)),
        };
        Ok(Escape::Item(item))
    }
}

enum Escape {
    Char(char),
    Item(Item),
}

fn category_mask(name: &str) -> Option<u32> {
    let bit = |n: &str| CATEGORY_NAMES.iter().position(|c| *c == n).map(|i| 1u32 << i);
    if name.len() == 2 {
        return bit(name);
    }
    let group = match name {
        "L" => "Lu Ll Lt Lm Lo",
        "M" => "Mn Mc Me",
        "N" => "Nd Nl No",
        "P" => "Pc Pd Ps Pe Pi Pf Po",
        "S" => "Sm Sc Sk So",
        "Z" => "Zs Zl Zp",
        "C" => "Cc Cf Cs Co Cn",
        _ => return None,
    };
    group.split(' ').map(bit).sum()
}

/// The set of chars equal to `c` under simple case folding (`fold`), or `c` alone.
fn literal_set(c: char, fold: bool) -> CharSet {
    let mut items = vec![Item::Range(c as u32, c as u32)];
    if fold {
        add_case_variants(&mut items);
    }
    CharSet::new(items, false)
}

/// Add every char that folds like a char the ranges hold.
fn add_case_variants(items: &mut Vec<Item>) {
    let holds = |items: &[Item], c: u32| items.iter().any(|i| matches!(*i, Item::Range(lo, hi) if lo <= c && c <= hi));
    let folded: Vec<u32> = CASE_FOLDS
        .iter()
        .flat_map(|&(from, to)| [(from, to), (to, from)])
        .filter(|&(c, _)| holds(items, c))
        .map(|(c, _)| simple_fold(c))
        .collect();
    for &(from, to) in CASE_FOLDS {
        if folded.contains(&to) {
            items.push(Item::Range(from, from));
            items.push(Item::Range(to, to));
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Inst {
    Set(usize),
    /// Try the first target, on failure the second.
    Split(usize, usize),
    Jump(usize),
    /// Run sub-program `prog` here; continue (without consuming) when it matches != `negated`.
    Look { prog: usize, negated: bool },
    /// Run sub-program `prog` here; continue after its first match, never backtracking into it.
    Atomic(usize),
    Match,
}

/// A compiled pattern.
#[derive(Debug)]
pub struct Regex {
    source: String,
    /// Whether the pattern can match without consuming a char (lookarounds counted as matching).
    nullable: bool,
    sets: Vec<CharSet>,
    /// Program 0 is the pattern; the others are lookahead and atomic bodies.
    progs: Vec<Vec<Inst>>,
}

struct Compiler {
    sets: Vec<CharSet>,
    progs: Vec<Vec<Inst>>,
}

impl Compiler {
    fn program(&mut self, node: &Node) -> Result<usize, String> {
        let index = self.progs.len();
        self.progs.push(Vec::new());
        let mut code = Vec::new();
        self.emit(node, &mut code)?;
        code.push(Inst::Match);
        self.progs[index] = code;
        Ok(index)
    }

    fn emit(&mut self, node: &Node, code: &mut Vec<Inst>) -> Result<(), String> {
        if code.len() > MAX_PROGRAM {
            return Err(format!("a pattern whose repeats compile to more than {} instructions", MAX_PROGRAM));
        }
        match node {
            Node::Set(set) => {
                self.sets.push(set.clone());
                code.push(Inst::Set(self.sets.len() - 1));
            }
            Node::Concat(nodes) => {
                for n in nodes {
                    self.emit(n, code)?;
                }
            }
            Node::Alt(nodes) => {
                let mut jumps = Vec::new();
                for (i, n) in nodes.iter().enumerate() {
                    if i + 1 < nodes.len() {
                        let split = code.len();
                        code.push(Inst::Split(split + 1, 0));
                        self.emit(n, code)?;
                        jumps.push(code.len());
                        code.push(Inst::Jump(0));
                        code[split] = Inst::Split(split + 1, code.len());
                    } else {
                        self.emit(n, code)?;
                    }
                }
                for j in jumps {
                    code[j] = Inst::Jump(code.len());
                }
            }
            Node::Repeat { node, min, max, lazy } => {
                for _ in 0..*min {
                    self.emit(node, code)?;
                }
                let branch = |code: &mut Vec<Inst>, at: usize, body: usize, out: usize| {
                    code[at] = if *lazy { Inst::Split(out, body) } else { Inst::Split(body, out) };
                };
                match max {
                    None => {
                        let top = code.len();
                        code.push(Inst::Jump(0));
                        self.emit(node, code)?;
                        code.push(Inst::Jump(top));
                        let out = code.len();
                        branch(code, top, top + 1, out);
                    }
                    Some(max) => {
                        // x{0,k}: (x(x(...)?)?)?, every optional copy skipping to the end
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(code.len());
                            code.push(Inst::Jump(0));
                            self.emit(node, code)?;
                        }
                        let out = code.len();
                        for at in splits {
                            branch(code, at, at + 1, out);
                        }
                    }
                }
            }
            Node::Atomic(node) => {
                let prog = self.program(node)?;
                code.push(Inst::Atomic(prog));
            }
            Node::Look { node, negated } => {
                let prog = self.program(node)?;
                code.push(Inst::Look { prog, negated: *negated });
            }
        }
        Ok(())
    }
}

impl Regex {
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let mut parser = Parser { pattern, chars: pattern.chars().collect(), at: 0 };
        let node = parser.alternation(false)?;
        if parser.at < parser.chars.len() {
            return Err(parser.error("an unmatched ')'"));
        }
        let mut compiler = Compiler { sets: Vec::new(), progs: Vec::new() };
        compiler.program(&node).map_err(|e| format!("unsupported split pattern {:?}: {}", pattern, e))?;
        Ok(Regex { source: pattern.to_string(), nullable: node.nullable(), sets: compiler.sets, progs: compiler.progs })
    }

    /// Whether some text may give an empty match (lookarounds assumed to hold).
    pub fn can_match_empty(&self) -> bool {
        self.nullable
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The end of the match starting exactly at `start`, if the pattern matches there.
    pub fn match_at(&self, text: &str, start: usize) -> Option<usize> {
        self.run(0, text, start, &mut Vec::new())
    }

    /// The leftmost match (start, end) at or after `from`.
    pub fn find_at(&self, text: &str, from: usize) -> Option<(usize, usize)> {
        let mut stack = Vec::new();
        let mut at = from;
        loop {
            if let Some(end) = self.run(0, text, at, &mut stack) {
                return Some((at, end));
            }
            match text[at..].chars().next() {
                Some(c) => at += c.len_utf8(),
                None => return None,
            }
        }
    }

    fn run(&self, prog: usize, text: &str, start: usize, stack: &mut Vec<(usize, usize)>) -> Option<usize> {
        let code = &self.progs[prog];
        let bytes = text.as_bytes();
        let base = stack.len();
        stack.push((0, start));
        let mut result = None;
        'threads: while stack.len() > base {
            let (mut pc, mut at) = stack.pop().unwrap();
            loop {
                match code[pc] {
                    Inst::Set(set) => {
                        let (c, len) = match bytes.get(at) {
                            Some(&b) if b < 0x80 => (b as char, 1),
                            Some(_) => {
                                let c = text[at..].chars().next().unwrap();
                                (c, c.len_utf8())
                            }
                            None => continue 'threads,
                        };
                        if !self.sets[set].matches(c) {
                            continue 'threads;
                        }
                        at += len;
                        pc += 1;
                    }
                    Inst::Split(first, second) => {
                        stack.push((second, at));
                        pc = first;
                    }
                    Inst::Jump(to) => pc = to,
                    Inst::Look { prog, negated } => {
                        if self.run(prog, text, at, stack).is_some() == negated {
                            continue 'threads;
                        }
                        pc += 1;
                    }
                    Inst::Atomic(prog) => match self.run(prog, text, at, stack) {
                        Some(end) => {
                            at = end;
                            pc += 1;
                        }
                        None => continue 'threads,
                    },
                    Inst::Match => {
                        result = Some(at);
                        break 'threads;
                    }
                }
            }
        }
        stack.truncate(base);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_all(pattern: &str, text: &str) -> Vec<String> {
        let re = Regex::new(pattern).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((s, e)) = re.find_at(text, at) {
            out.push(text[s..e].to_string());
            at = if e > s { e } else { e + text[e..].chars().next().map_or(1, char::len_utf8) };
            if at > text.len() {
                break;
            }
        }
        out
    }

    #[test]
    fn categories_come_from_the_tables() {
        let name = |c| CATEGORY_NAMES[category(c)];
        assert_eq!([name('a'), name('A'), name('ǅ'), name('ʰ'), name('中')], ["Ll", "Lu", "Lt", "Lm", "Lo"]);
        assert_eq!([name('\u{301}'), name('٣'), name('Ⅻ'), name('½'), name('\u{10FFFF}')], ["Mn", "Nd", "Nl", "No", "Cn"]);
    }

    #[test]
    fn backtracking_semantics() {
        assert_eq!(find_all(r"\s+(?!\S)|\s+", "a   b  "), vec!["  ", " ", "  "]);
        assert_eq!(find_all(r"ab|a|abc", "abc"), vec!["ab"]);
        assert_eq!(find_all(r"a*?b", "aab"), vec!["aab"]);
        assert_eq!(find_all(r"a?+a", "a"), Vec::<String>::new());
        assert_eq!(find_all(r"\p{N}{1,3}", "12345"), vec!["123", "45"]);
        assert_eq!(find_all(r"(?i:'s|'ll)", "'S 'ſ 'lL"), vec!["'S", "'ſ", "'lL"]);
        assert_eq!(find_all(r"[^\s\p{L}]+", "ab !? c"), vec!["!?"]);
        assert_eq!(find_all(r"[\p{Lu}\p{Lt}]*[\p{Ll}]+", "HTMLParser"), vec!["HTMLParser"]);
        assert_eq!(find_all(r"x(?=y)", "xxy"), vec!["x"]);
        assert_eq!(find_all(r"[a\-z]+", "a-z"), vec!["a-z"]);
        assert_eq!(find_all(r"\x41\u0042\x{43}", "ABC"), vec!["ABC"]);
        assert_eq!(find_all(r"\}?a{2}?b{1,}", "}aab}aabb"), vec!["}aab", "}aabb"]);
        // a nested class is a union (Bloom's split pattern)
        assert_eq!(find_all(r" ?[^(\s|[.,!?…])]+", "Hi, you (there)! ok…"), vec!["Hi", " you", "there", " ok"]);
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (pattern, says) in [
            (r"^a", "anchor"),
            (r"(?<=a)b", "lookbehind"),
            (r"\w+", r"\w"),
            (r"\p{Han}", "Han"),
            (r"[a[^b]]", "negated nested class"),
            (r"[[:alpha:]]", "POSIX bracket"),
            (r"(a*)*", "empty string"),
            (r"(?i:ss)", "\"ss\""),
            (r"(a", "unclosed"),
            (r"a)", "unmatched"),
            (r"a{2,3}+", "counted repeat"),
            (r"*a", "nothing to repeat"),
        ] {
            let err = Regex::new(pattern).err().unwrap_or_else(|| panic!("{} accepted", pattern));
            assert!(err.contains(says), "{}: {}", pattern, err);
        }
    }
}
