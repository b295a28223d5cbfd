//! The scaler's events (one JSON line per evaluation, `events_file`) and the timeline drawn
//! from them (`ringlb scale --plot EVENTS -o timeline.svg`): each policy's reading on top,
//! desired and in-service backends below, as the AWS console shows a scaling activity.
//!
//! Owns: the event format and a plain SVG writer. Must not touch: the scaling itself.

use serde::{Deserialize, Serialize};

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time, in seconds.
    pub time: f64,
    pub policies: Vec<PolicyPoint>,
    pub desired: u32,
    pub in_service: u32,
    pub starting: u32,
    pub draining: u32,
    pub protected: u32,
    pub min: u32,
    pub max: u32,
    /// Backends of ours that came up at this evaluation and made the scaler ask the
    /// balancer to rebalance the pool (`rebalance_on_scale_out`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebalanced_after: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyPoint {
    pub name: String,
    /// `None`: no reading.
    pub value: Option<f64>,
    pub wish: Option<i64>,
}

/// Reads an events file; lines that are not events are skipped (a file cut short by a
/// crash still plots).
pub fn read_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

const W: f64 = 900.0;
const PANEL: f64 = 180.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const COLORS: &[&str] = &["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A polyline of `(t, v)` points, stepped (a count holds until the next evaluation).
fn path(
    points: &[(f64, f64)],
    x: impl Fn(f64) -> f64,
    y: impl Fn(f64) -> f64,
    step: bool,
) -> String {
    let mut d = String::new();
    let mut last: Option<f64> = None;
    for &(t, v) in points {
        if let (true, Some(prev)) = (step, last) {
            d.push_str(&format!("{:.1},{:.1} ", x(t), y(prev)));
        }
        d.push_str(&format!("{:.1},{:.1} ", x(t), y(v)));
        last = Some(v);
    }
    d
}

/// The timeline of `events` as an SVG document.
pub fn svg(events: &[Event], title: &str) -> String {
    let h = 2.0 * PANEL + 130.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"20\" font-size=\"15\">{}</text>\n",
        esc(title)
    );
    if events.is_empty() {
        out.push_str("<text x=\"60\" y=\"60\">no events</text>\n</svg>\n");
        return out;
    }
    let t0 = events[0].time;
    let t1 = events.last().map(|e| e.time).unwrap_or(t0).max(t0 + 1.0);
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0) * (W - LEFT - RIGHT);
    // Top panel: each policy's reading, scaled to its own largest value.
    let top = 45.0;
    let names: Vec<String> = {
        let mut n: Vec<String> = Vec::new();
        for e in events {
            for p in &e.policies {
                if !n.contains(&p.name) {
                    n.push(p.name.clone());
                }
            }
        }
        n
    };
    out.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#ccc\"/>\n<text x=\"{LEFT}\" y=\"{}\" fill=\"#555\">each policy's reading, scaled to its peak</text>\n",
        W - LEFT - RIGHT,
        top - 4.0
    ));
    for (i, name) in names.iter().enumerate() {
        let pts: Vec<(f64, f64)> = events
            .iter()
            .filter_map(|e| {
                e.policies
                    .iter()
                    .find(|p| &p.name == name)
                    .and_then(|p| p.value)
                    .map(|v| (e.time, v))
            })
            .collect();
        let peak = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
        let y = |v: f64| top + PANEL - v / peak * (PANEL - 10.0);
        let color = COLORS[i % COLORS.len()];
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{color}\">{} (peak {:.1})</text>\n",
            path(&pts, x, y, false),
            LEFT + 10.0 + i as f64 * 200.0,
            top + PANEL + 16.0,
            esc(name),
            peak
        ));
    }
    // Bottom panel: backends.
    let bot = top + PANEL + 45.0;
    let most = events
        .iter()
        .map(|e| {
            e.desired
                .max(e.in_service + e.starting + e.draining)
                .max(e.max)
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y = |v: f64| bot + PANEL - v / most * (PANEL - 10.0);
    out.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{bot}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#ccc\"/>\n<text x=\"{LEFT}\" y=\"{}\" fill=\"#555\">backends</text>\n",
        W - LEFT - RIGHT,
        bot - 4.0
    ));
    for k in 0..=(most as u32) {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#888\">{k}</text>\n",
            LEFT - 6.0,
            y(k as f64) + 4.0
        ));
    }
    type Series = (&'static str, &'static str, fn(&Event) -> f64);
    let series: [Series; 4] = [
        ("desired", "#d62728", |e| e.desired as f64),
        ("in service", "#2ca02c", |e| e.in_service as f64),
        ("starting", "#17becf", |e| e.starting as f64),
        ("draining", "#7f7f7f", |e| e.draining as f64),
    ];
    for (i, (label, color, f)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = events.iter().map(|e| (e.time, f(e))).collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{color}\">{label}</text>\n",
            if i == 0 { 2.5 } else { 1.5 },
            path(&pts, x, y, true),
            LEFT + 10.0 + i as f64 * 120.0,
            bot + PANEL + 16.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" fill=\"#888\">0 s</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#888\">{:.0} s</text>\n</svg>\n",
        h - 8.0,
        W - RIGHT,
        h - 8.0,
        t1 - t0
    ));
    out
}

/// `ringlb scale --plot EVENTS -o SVG`.
pub fn plot_file(events: &std::path::Path, out: &std::path::Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(events).map_err(|e| format!("{}: {e}", events.display()))?;
    let list = read_events(&text);
    if list.is_empty() {
        return Err(format!("{}: no events in it", events.display()));
    }
    let title = format!("ringlb scale: {} evaluations", list.len());
    std::fs::write(out, svg(&list, &title)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(list.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: f64, v: Option<f64>, desired: u32, up: u32) -> Event {
        Event {
            time: t,
            policies: vec![PolicyPoint {
                name: "rate <&>".into(),
                value: v,
                wish: Some(desired as i64),
            }],
            desired,
            in_service: up,
            starting: 0,
            draining: 0,
            protected: 0,
            min: 1,
            max: 4,
            rebalanced_after: vec![],
        }
    }

    #[test]
    fn events_round_trip_and_plot_as_svg() {
        let list = vec![
            ev(100.0, Some(1.0), 1, 1),
            ev(101.0, None, 3, 1),
            ev(102.0, Some(9.0), 3, 3),
        ];
        let text: String = list
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        let text = format!("{text}not json\n{{\"cut");
        assert_eq!(read_events(&text), list, "skips what is not an event");
        let svg = svg(&list, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("rate &lt;&amp;&gt;"), "names are escaped");
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.contains("in service"));
        assert!(!super::svg(&[], "t").contains("polyline"));
    }
}
