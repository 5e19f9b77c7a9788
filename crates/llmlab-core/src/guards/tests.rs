//! Guard logic on token sequences. A word-level stand-in tokenizer keeps the
//! fixtures readable: every distinct word or punctuation mark is one id.

use std::collections::HashMap;

use super::*;

fn tokenize(text: &str, vocab: &mut HashMap<String, u32>) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut word = String::new();
    let mut push = |piece: &str, ids: &mut Vec<u32>| {
        let next = vocab.len() as u32;
        ids.push(*vocab.entry(piece.to_owned()).or_insert(next));
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            push(&word, &mut ids);
            word.clear();
        }
        if !c.is_whitespace() || c == '\n' {
            push(&c.to_string(), &mut ids);
        }
    }
    if !word.is_empty() {
        push(&word, &mut ids);
    }
    ids
}

/// Index of the token that tripped the repetition guard, if any.
fn first_trip(tokens: &[u32]) -> Option<(usize, GuardTrip)> {
    let mut guard = GuardSet::new(&GuardSettings::default());
    tokens
        .iter()
        .enumerate()
        .find_map(|(i, t)| guard.observe(*t, None).map(|trip| (i, trip)))
}

#[test]
fn loops_of_several_periods_trip_soon_after_they_start() {
    for period in [1usize, 2, 7, 20, 64] {
        let intro: Vec<u32> = (1000..1030).collect();
        let unit: Vec<u32> = (0..period as u32).collect();
        let mut tokens = intro.clone();
        for _ in 0..200 {
            tokens.extend(&unit);
        }
        let (at, trip) = first_trip(&tokens).unwrap_or_else(|| panic!("period {period} never tripped"));
        assert_eq!(trip.kind, GuardKind::Repetition);
        let looped = at + 1 - intro.len();
        let defaults = RepetitionSettings::default();
        let expected = (period * defaults.min_repeats).max(defaults.min_span);
        assert!(
            looped <= expected,
            "period {period}: tripped after {looped} looping tokens, expected by {expected}"
        );
    }
}

#[test]
fn a_loop_with_a_changing_counter_trips_the_ngram_check() {
    let mut vocab = HashMap::new();
    let mut tokens = tokenize("Here is the plan.\n", &mut vocab);
    for i in 0..80 {
        tokens.extend(tokenize(
            &format!("Step {i}: we check the value and then we check the value again.\n"),
            &mut vocab,
        ));
    }
    let (_, trip) = first_trip(&tokens).expect("the near-loop trips");
    assert_eq!(trip.kind, GuardKind::Repetition);
}

const PROSE: &str = "The history of the printing press begins in the fifteenth century, when Johannes \
Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from wine making. \
Books that had taken scribes months could now be produced in days, and their price fell sharply. \
Within fifty years presses were working in more than two hundred European cities. Literacy spread, \
scholars could compare identical copies of a text, and vernacular languages gained printed grammars \
and dictionaries. Religious reformers used pamphlets to reach readers directly, while governments \
soon learned to license printers and censor what they produced. Newspapers followed in the \
seventeenth century, scientific journals shortly after, and by the nineteenth century steam-driven \
rotary presses were printing thousands of sheets an hour for a mass readership.";

const CODE: &str = r##"
def parse_config(path):
    with open(path) as f:
        lines = f.readlines()
    config = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config

class Matrix:
    def __init__(self, rows, cols):
        self.rows = rows
        self.cols = cols
        self.data = [[0] * cols for _ in range(rows)]

    def get(self, i, j):
        return self.data[i][j]

    def set(self, i, j, value):
        self.data[i][j] = value

    def transpose(self):
        result = Matrix(self.cols, self.rows)
        for i in range(self.rows):
            for j in range(self.cols):
                result.set(j, i, self.get(i, j))
        return result
"##;

#[test]
fn natural_text_code_and_lists_do_not_trip() {
    let mut vocab = HashMap::new();
    let list: String = (1..=120)
        .map(|i| format!("{i}. item number {i} of the inventory\n"))
        .collect();
    let table: String = (1..=40).map(|i| format!("| {i} | {} | {} |\n", i * i, i * 3)).collect();
    let numbers: String = (1..=200).map(|i| format!("{i}, ")).collect();
    for (name, text) in [
        ("prose", PROSE.to_owned()),
        ("code", CODE.to_owned()),
        ("numbered list", list),
        ("table", table),
        ("counting", numbers),
    ] {
        let tokens = tokenize(&text, &mut vocab);
        assert!(
            first_trip(&tokens).is_none(),
            "{name} tripped: {:?}",
            first_trip(&tokens)
        );
    }
}

#[test]
fn the_perplexity_guard_trips_on_noise_after_its_minimum_and_not_on_fluent_text() {
    let settings = GuardSettings::default();
    let mut noisy = GuardSet::new(&settings);
    assert!(noisy.needs_logprobs());
    let trip = (0..200u32)
        .find_map(|i| noisy.observe(i, Some(-9.5)).map(|trip| (i, trip)))
        .expect("noise trips");
    assert_eq!(
        trip.0 as usize + 1,
        settings.perplexity.min_tokens.max(settings.perplexity.window)
    );
    assert_eq!(trip.1.kind, GuardKind::Perplexity);
    assert!((trip.1.figure - 9.5).abs() < 1e-9);

    // Fluent text with the odd surprising token stays under the limit.
    let mut fluent = GuardSet::new(&settings);
    for i in 0..500u32 {
        let logprob = if i % 10 == 0 { -8.0 } else { -0.7 };
        assert!(fluent.observe(i, Some(logprob)).is_none(), "tripped at {i}");
    }
}

#[test]
fn disabled_guards_never_trip_and_need_no_logprobs() {
    let mut settings = GuardSettings::default();
    settings.repetition.enabled = false;
    settings.perplexity.enabled = false;
    let mut guards = GuardSet::new(&settings);
    assert!(!guards.needs_logprobs());
    assert!((0..500).all(|_| guards.observe(7, Some(-20.0)).is_none()));
}
