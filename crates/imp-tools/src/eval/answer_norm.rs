//! EvalAI's answer normalisation and the VQA soft accuracy, behaving as LLaVA's
//! `llava/eval/m4c_evaluator.py` (`EvalAIAnswerProcessor`, taken by LLaVA from MMF, and
//! `TextVQAAccuracyEvaluator`) does, quirks included:
//!
//! - punctuation next to a space is deleted, elsewhere it becomes a space (`red/blue` → `red
//!   blue`, `a (b)` → `b`), decided per mark on the text before any replacement;
//! - a period is dropped unless a digit follows, but at most 32 of them: the reference passes
//!   `re.UNICODE` (= 32) where `re.sub` expects its `count`;
//! - apostrophes stay (`o'donnell`), `'s` is split off (`it 's`), `,` and `?` vanish first.
//!
//! One difference: the reference's `\d` also matches non-ASCII decimal digits; here only ASCII
//! digits count, which matters only for a period before such a digit.

/// Marks that the reference removes or turns into spaces (`.` is handled separately).
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// Number words the reference turns into digits (only up to ten).
const NUMBERS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// The reference's contraction fixes, as (word, replacement) sorted by word. Its entries with
/// capitals (`Im`, `Ive`, `Id've`, `I'dve`) are left out: words are lowercased before the lookup,
/// so they never apply. `somebody'd` → `somebodyd` is the reference's own (reversed) entry.
const CONTRACTIONS: [(&str, &str); 116] = [
    ("'ow'sat", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt", "couldn't"),
    ("couldnt've", "couldn't've"),
    ("couldve", "could've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadn'tve", "hadn't've"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("he'dve", "he'd've"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("isnt", "isn't"),
    ("it'dve", "it'd've"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightn'tve", "mightn't've"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("shant", "shan't"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shed've", "she'd've"),
    ("shouldn'tve", "shouldn't've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldve", "should've"),
    ("somebody'd", "somebodyd"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyd've", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someone'dve", "someone'd've"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("something'dve", "something'd've"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("there'dve", "there'd've"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("they'dve", "they'd've"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("we'dve", "we'd've"),
    ("wed've", "we'd've"),
    ("werent", "weren't"),
    ("weve", "we've"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("who'dve", "who'd've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldn'tve", "wouldn't've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldve", "would've"),
    ("y'all'dve", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'allll", "y'all'll"),
    ("yall", "y'all"),
    ("yall'd've", "y'all'd've"),
    ("yall'll", "y'all'll"),
    ("you'dve", "you'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// How many periods the reference removes at most (see the module notes).
const MAX_PERIODS_REMOVED: usize = 32;

/// Python's `str.isspace`, which also counts the ASCII separators U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// EvalAI's normalisation of one answer (`EvalAIAnswerProcessor.__call__`).
pub fn normalize(answer: &str) -> String {
    let word = answer
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let item = word.trim_matches(is_py_space).replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(item.trim_matches(is_py_space)))
}

fn process_punctuation(text: &str) -> String {
    let digit_comma_digit = has_digit_comma_digit(text);
    let mut out = text.to_owned();
    let mut buf = [0u8; 4];
    for mark in PUNCTUATION {
        let mark: &str = mark.encode_utf8(&mut buf);
        let spaced = text.contains(&format!("{mark} ")) || text.contains(&format!(" {mark}"));
        let with = if spaced || digit_comma_digit { "" } else { " " };
        out = out.replace(mark, with);
    }
    let chars: Vec<char> = out.chars().collect();
    let mut removed = 0;
    let mut result = String::with_capacity(out.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_follows = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c == '.' && !digit_follows && removed < MAX_PERIODS_REMOVED {
            removed += 1;
        } else {
            result.push(c);
        }
    }
    result
}

/// The reference's `COMMA_STRIP` test: a digit, one or more commas, a digit.
fn has_digit_comma_digit(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().any(|(i, c)| {
        c.is_ascii_digit() && {
            let commas = chars[i + 1..].iter().take_while(|&&c| c == ',').count();
            commas > 0 && chars.get(i + 1 + commas).is_some_and(char::is_ascii_digit)
        }
    })
}

fn process_digit_article(text: &str) -> String {
    text.to_lowercase()
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .map(|w| NUMBERS.iter().find(|(n, _)| *n == w).map_or(w, |(_, d)| *d))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .binary_search_by_key(&w, |(from, _)| *from)
                .map_or(w, |i| CONTRACTIONS[i].1)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VQA soft accuracy of `prediction` against the human answers (ten of them in VQAv2,
/// VizWiz and TextVQA), both normalised: the mean over leaving each human answer out of
/// min(1, matching remaining answers / 3).
pub fn soft_accuracy(prediction: &str, human_answers: &[String]) -> f64 {
    let prediction = normalize(prediction);
    let humans: Vec<String> = human_answers.iter().map(|a| normalize(a)).collect();
    let matches = humans.iter().filter(|h| **h == prediction).count();
    if matches == 0 {
        return 0.0;
    }
    let sum: f64 = humans
        .iter()
        .map(|h| ((matches - usize::from(*h == prediction)) as f64 / 3.0).min(1.0))
        .sum();
    sum / humans.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outputs are what LLaVA's EvalAIAnswerProcessor returns for these inputs.
    fn check(cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            assert_eq!(normalize(input), *expected, "normalize({input:?})");
        }
    }

    #[test]
    fn contraction_table_is_sorted_for_binary_search() {
        assert!(CONTRACTIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn number_words_become_digits_up_to_ten() {
        check(&[
            ("Two", "2"),
            ("ONE", "1"),
            ("ten dogs", "10 dogs"),
            ("one two three", "1 2 3"),
            ("zero", "0"),
            ("None", "0"),
            ("Eleven", "eleven"),
            ("fourteen", "fourteen"),
            ("The Answer Is: Four", "answer is: 4"),
        ]);
    }

    #[test]
    fn articles_are_dropped() {
        check(&[
            ("a dog", "dog"),
            ("An apple", "apple"),
            ("The cat.", "cat"),
            ("the the", ""),
            // `(` and `)` become spaces and leave the article `a` alone.
            ("(a)", ""),
            ("a_b", "b"),
        ]);
    }

    #[test]
    fn punctuation_rules() {
        check(&[
            ("Yes.", "yes"),
            ("red/blue", "red blue"),
            ("red / blue", "red blue"),
            ("well-known", "well known"),
            ("well - known", "well known"),
            ("a (b)", "b"),
            ("hello!", "hello"),
            ("what?", "what"),
            ("semi;colon", "semi colon"),
            ("x=y", "x y"),
            ("c++", "c"),
            ("C#", "c#"),
            ("<tag>", "tag"),
            ("@home", "home"),
            ("`tick`", "tick"),
            ("\"quoted\"", "quoted"),
            ("back\\slash", "back slash"),
            ("6:00", "6:00"),
            ("08/13/2011", "08 13 2011"),
            ("?!", ""),
            ("hi,there", "hithere"),
            ("yes, sir", "yes sir"),
        ]);
    }

    #[test]
    fn periods_and_numbers() {
        check(&[
            ("3.14", "3.14"),
            ("1,000", "1000"),
            ("1, 000", "1 000"),
            ("1.5.", "1.5"),
            ("v2.0 release.", "v2.0 release"),
            ("1..2", "1.2"),
            ("no.1", "no.1"),
            ("U.S.A.", "usa"),
            ("e.g. this", "eg this"),
            (
                "The poster shows a 10% discount.",
                "poster shows 10% discount",
            ),
            (".", ""),
            ("...", ""),
            ("", ""),
        ]);
        // Only the first 32 periods go (re.UNICODE passed as re.sub's count).
        let many = format!("a{}b", ".".repeat(40));
        assert_eq!(normalize(&many), format!("a{}b", ".".repeat(8)));
    }

    #[test]
    fn contractions_and_possessives() {
        check(&[
            ("dont", "don't"),
            ("Dont", "don't"),
            ("isnt it", "isn't it"),
            ("yall'll", "y'all'll"),
            ("I'm", "i'm"),
            ("Im", "im"),
            ("It's red", "it 's red"),
            ("what's", "what 's"),
            ("mr. smith's", "mr smith 's"),
            ("O'Donnell", "o'donnell"),
            ("rock 'n' roll", "rock 'n' roll"),
            ("dogs'", "dogs'"),
        ]);
    }

    #[test]
    fn whitespace_and_unicode() {
        check(&[
            ("  spaced\tout\nlines  ", "spaced out lines"),
            ("no\u{a0}break", "no break"),
            ("x\u{3000}y", "x y"),
            ("Ünïcödé Straße", "ünïcödé straße"),
            ("ΑΒΓ", "αβγ"),
            ("café.", "café"),
        ]);
    }

    #[test]
    fn soft_accuracy_matches_textvqa_evaluator() {
        let humans = |spec: &[(&str, usize)]| -> Vec<String> {
            spec.iter()
                .flat_map(|(a, n)| std::iter::repeat_n(a.to_string(), *n))
                .collect()
        };
        // Values computed with TextVQAAccuracyEvaluator._compute_answer_scores.
        let two = humans(&[("two", 3), ("2", 1), ("three", 6)]);
        assert_eq!(soft_accuracy("2", &two), 1.0);
        assert_eq!(soft_accuracy("Two.", &two), 1.0);
        assert_eq!(soft_accuracy("four", &two), 0.0);
        let yes = humans(&[("yes", 2), ("no", 8)]);
        assert!((soft_accuracy("yes", &yes) - 0.6).abs() < 1e-12);
        assert_eq!(soft_accuracy("no", &yes), 1.0);
        let red = humans(&[("red", 1), ("blue", 9)]);
        assert!((soft_accuracy("red", &red) - 0.3).abs() < 1e-12);
        assert_eq!(soft_accuracy("The cat", &humans(&[("cat", 10)])), 1.0);
    }
}
