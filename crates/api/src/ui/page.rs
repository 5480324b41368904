//! The shell every page shares (head, navigation, footer) and the small formatters the pages
//! use. Text reaches HTML only through maud's `(…)`, which escapes it; nothing here writes
//! untrusted text unescaped.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The sections in the navigation bar: path and label.
pub const SECTIONS: [(&str, &str); 4] = [
    ("/", "Catalogue"),
    ("/network", "Network"),
    ("/credits", "Credits"),
    ("/node", "Node"),
];

/// A whole page: `title` (escaped), the section it belongs to (its path in [`SECTIONS`]), the
/// body, and whether it needs the charting library.
pub fn page(title: &str, section: &str, body: Markup, charts: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                link rel="icon" href="data:,";
                title { (title) " · moxnet" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                @if charts {
                    link rel="stylesheet" href="/ui/assets/uPlot.min.css";
                    script src="/ui/assets/uPlot.iife.min.js" defer {}
                }
                script src="/ui/assets/ui.js" defer {}
            }
            body {
                header.top {
                    div.bar {
                        a.brand href="/" { "moxnet" }
                        nav {
                            @for (path, label) in SECTIONS {
                                a href=(path) class=[(path == section).then_some("here")] { (label) }
                            }
                        }
                    }
                }
                main { (body) }
                footer {
                    "moxnet " (env!("CARGO_PKG_VERSION")) " · "
                    a href="/metrics" { "metrics" } " · "
                    a href="/v2" { "OIP server metadata" }
                }
            }
        }
    }
}

/// An error page: what went wrong, in words.
pub fn error_page(status: u16, message: &str) -> Markup {
    page(
        "Error",
        "",
        html! {
            h1 { "Error " (status) }
            div.panel.error { p { (message) } }
            p { a href="/" { "Back to the catalogue" } }
        },
        false,
    )
}

/// `bytes` for people: `12.3 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The first characters of a long id, for tables (the whole id goes in a `title`).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A score with two decimals, signed.
pub fn score(value: f64) -> String {
    format!("{value:+.2}")
}

/// JSON for a `<script type="application/json">` block: `<`, `>` and `&` are written as
/// `\u003c`… so no text in it can close the element or open a comment.
pub fn json_block(id: &str, value: &serde_json::Value) -> Markup {
    let text = value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    html! { script type="application/json" id=(id) { (PreEscaped(text)) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ids_and_json_blocks() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        let block = json_block("x", &serde_json::json!({"a": "</script><!--&"})).into_string();
        assert!(!block[..block.len() - "</script>".len()].contains("</script"));
        assert!(block.contains("\\u003c/script\\u003e\\u003c!--\\u0026"));
    }
}
