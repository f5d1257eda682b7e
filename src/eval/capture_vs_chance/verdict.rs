//! The verdict for new tasks like the measured ones ([`verdict`]): a gain expected, partial,
//! or none, from a typical capture against its random control, with the thresholds fixed
//! before any workload was measured.

/// What the captures predict for new tasks like the measured ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gain {
    /// Most of a new task's ΔW is already inside: zero-shot projection and training in the
    /// subspace should start far ahead of a random basis.
    Expected,
    /// Some of it is inside: a partial head start.
    Partial,
    /// About as much as a random subspace holds: no gain over a random basis.
    None,
}

/// A verdict and the sentence that explains it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// The prediction.
    pub gain: Gain,
    /// One line for people: the prediction and the numbers behind it.
    pub line: String,
}

/// Capture at or above which a gain is expected (with the capture at least
/// [`GAIN_OVER_CHANCE`] times the random control). Chosen before any workload was measured
/// against it: a projected adapter then keeps 30% of its update's energy, a head start that a
/// random subspace of the same size cannot give.
pub const GAIN_CAPTURE: f64 = 0.30;

/// Capture below which no gain is expected, whatever the ratio to chance.
pub const NO_GAIN_CAPTURE: f64 = 0.10;

/// How many times the random control the capture must be for an expected gain; below 3x
/// there is no gain.
pub const GAIN_OVER_CHANCE: f64 = 10.0;

/// The verdict for new tasks whose adapters capture `captured` of their ΔW (a typical value
/// over the measured adapters: the mean, or the median in [`structure`](super::structure)) against `random` for
/// a random subspace of the same size.
pub fn verdict(captured: f64, random: f64) -> Verdict {
    verdict_with(captured, random, "held-out adapters put", "their")
}

/// [`verdict`] with the subject of the numbers ("held-out adapters put", "the median held-out
/// adapter puts") and its possessive ("their", "its").
pub(super) fn verdict_with(captured: f64, random: f64, subject: &str, possessive: &str) -> Verdict {
    // A ratio only where it means something: 0 / 0 is not "far above" anything.
    let ratio = if random > 0.0 {
        captured / random
    } else if captured > 0.0 {
        f64::INFINITY
    } else {
        f64::NAN
    };
    let versus = if ratio.is_nan() {
        "no more than".to_string()
    } else if ratio.is_finite() {
        format!("{ratio:.0}x")
    } else {
        "far above".into()
    };
    let numbers = format!(
        "{subject} {:.1}% of {possessive} ΔW inside the subspace, {versus} a random subspace of the same size ({:.2}%)",
        100.0 * captured,
        100.0 * random
    );
    let gain = if captured >= GAIN_CAPTURE && ratio >= GAIN_OVER_CHANCE {
        Gain::Expected
    } else if captured < NO_GAIN_CAPTURE || ratio.is_nan() || ratio < 3.0 {
        Gain::None
    } else {
        Gain::Partial
    };
    let line = match gain {
        Gain::Expected => format!("new tasks like these: expected gain ({numbers})"),
        Gain::Partial => format!("new tasks like these: partial gain at best ({numbers})"),
        Gain::None if captured < NO_GAIN_CAPTURE => format!(
            "new tasks like these: no gain expected, their updates lie almost entirely outside the subspace ({numbers})"
        ),
        Gain::None => format!(
            "new tasks like these: no gain expected, the subspace holds little more than a random one ({numbers})"
        ),
    };
    Verdict { gain, line }
}
