//! ASCII tables exactly as etcdctl draws them (olekukonko/tablewriter with
//! etcdctl's settings): `+---+` borders, upper-cased centred headers,
//! right-aligned cells, and cells wider than 30 columns word-wrapped with
//! tablewriter's minimum-raggedness algorithm.

/// tablewriter's default maximum cell width before wrapping.
const MAX_CELL_WIDTH: usize = 30;
/// tablewriter's penalty for a line longer than the limit.
const TOO_LONG_PENALTY: i64 = 100_000;

/// A table: header titles and rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Renders the table, each line ending in `\n`.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(std::iter::once(self.header.len()))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        let cell = |row: &Vec<String>, i: usize| row.get(i).cloned().unwrap_or_default();

        let mut wrap = |text: String, col: usize| {
            let (lines, w) = wrap_cell(&text);
            widths[col] = widths[col].max(w);
            lines
        };
        let header: Vec<Vec<String>> = (0..ncols).map(|i| wrap(cell(&self.header, i), i)).collect();
        let rows: Vec<Vec<Vec<String>>> = self
            .rows
            .iter()
            .map(|r| (0..ncols).map(|i| wrap(cell(r, i), i)).collect())
            .collect();

        let mut out = String::new();
        let border = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s.push('\n');
            s
        };
        out.push_str(&border);
        let height = header.iter().map(Vec::len).max().unwrap_or(0);
        for line in 0..height {
            out.push('|');
            for (i, lines) in header.iter().enumerate() {
                let text = title(lines.get(line).map(String::as_str).unwrap_or(""));
                out.push(' ');
                out.push_str(&pad_center(&text, widths[i]));
                out.push_str(" |");
            }
            out.push('\n');
        }
        out.push_str(&border);
        for cells in &rows {
            let height = cells.iter().map(Vec::len).max().unwrap_or(0);
            for line in 0..height {
                out.push('|');
                for (i, lines) in cells.iter().enumerate() {
                    let text = lines.get(line).map(String::as_str).unwrap_or("");
                    out.push(' ');
                    out.push_str(&pad_left(text, widths[i]));
                    out.push_str(" |");
                }
                out.push('\n');
            }
        }
        // tablewriter closes the table even when it has no rows.
        out.push_str(&border);
        out
    }
}

/// Display width (one column per character; etcd's cells are ASCII).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// tablewriter's `Title`: underscores become spaces, then upper case.
fn title(s: &str) -> String {
    let t = s.replace('_', " ");
    let t = t.trim();
    if t.is_empty() && !s.is_empty() {
        return " ".to_string();
    }
    t.to_uppercase()
}

fn pad_center(s: &str, w: usize) -> String {
    let gap = w.saturating_sub(width(s));
    let left = gap / 2;
    format!("{}{}{}", " ".repeat(left), s, " ".repeat(gap - left))
}

fn pad_left(s: &str, w: usize) -> String {
    format!("{}{}", " ".repeat(w.saturating_sub(width(s))), s)
}

/// tablewriter's `parseDimension` with auto-wrap and reflow: the cell's
/// lines joined into one paragraph and wrapped at min(widest line, 30).
/// Returns the lines and the width the cell claims for its column, which
/// is at least that limit even when the wrapped lines are narrower.
fn wrap_cell(s: &str) -> (Vec<String>, usize) {
    let raw: Vec<&str> = s.split('\n').collect();
    let max = raw.iter().map(|l| width(l)).max().unwrap_or(0);
    let lim = max.min(MAX_CELL_WIDTH);
    let para = raw.join(" ");
    let lines = wrap_string(&para, lim);
    let w = lines.iter().map(|l| width(l)).fold(lim, usize::max);
    (lines, w)
}

/// tablewriter's `WrapString`.
fn wrap_string(s: &str, lim: usize) -> Vec<String> {
    let words: Vec<&str> = s.split(' ').collect();
    let mut lim = lim;
    for w in &words {
        lim = lim.max(width(w));
    }
    wrap_words(&words, 1, lim, TOO_LONG_PENALTY)
        .into_iter()
        .map(|line| line.join(" "))
        .collect()
}

/// tablewriter's `WrapWords`: splits words into lines minimising the sum of
/// squared slack, with `pen` added for lines over the limit.
fn wrap_words<'a>(words: &[&'a str], spc: usize, lim: usize, pen: i64) -> Vec<Vec<&'a str>> {
    let n = words.len();
    if n == 0 {
        return vec![Vec::new()];
    }
    // length[i][j]: width of words i..=j joined with spaces.
    let mut length = vec![vec![0usize; n]; n];
    for i in 0..n {
        length[i][i] = width(words[i]);
        for j in i + 1..n {
            length[i][j] = length[i][j - 1] + spc + width(words[j]);
        }
    }
    let mut nbrk = vec![0usize; n];
    let mut cost = vec![i64::from(i32::MAX); n];
    for i in (0..n).rev() {
        if length[i][n - 1] <= lim {
            cost[i] = 0;
            nbrk[i] = n;
        } else {
            for j in i + 1..n {
                let d = lim as i64 - length[i][j - 1] as i64;
                let mut c = d * d + cost[j];
                if length[i][j - 1] > lim {
                    c += pen;
                }
                if c < cost[i] {
                    cost[i] = c;
                    nbrk[i] = j;
                }
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        let next = nbrk[i].max(i + 1);
        lines.push(words[i..next].to_vec());
        i = next;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_etcdctl() {
        let mut t = Table::new(&["endpoint", "health", "took", "error"]);
        t.push(vec![
            "127.0.0.1:23790".into(),
            "true".into(),
            "1.365147ms".into(),
            String::new(),
        ]);
        let want = "\
+-----------------+--------+------------+-------+
|    ENDPOINT     | HEALTH |    TOOK    | ERROR |
+-----------------+--------+------------+-------+
| 127.0.0.1:23790 |   true | 1.365147ms |       |
+-----------------+--------+------------+-------+
";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn wrapped_cell_keeps_the_wrap_width() {
        // Checked against etcdctl 3.5.1 with a member named like this.
        let mut t = Table::new(&["ID", "Name"]);
        t.push(vec![
            "3760a4ec3b84f7fa".into(),
            "my very long member name with spaces inside it".into(),
        ]);
        let want = "\
+------------------+--------------------------------+
|        ID        |              NAME              |
+------------------+--------------------------------+
| 3760a4ec3b84f7fa |  my very long member name with |
|                  |               spaces inside it |
+------------------+--------------------------------+
";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn long_cells_wrap_at_spaces() {
        let (lines, w) = wrap_cell("failed to connect to 127.0.0.1:1: connection refused");
        assert_eq!(w, 30);
        assert!(lines.iter().all(|l| width(l) <= 30), "{lines:?}");
        assert_eq!(
            lines.join(" "),
            "failed to connect to 127.0.0.1:1: connection refused"
        );
        // A single long word is never split.
        assert_eq!(
            wrap_cell("http://127.0.0.1:23800,http://127.0.0.1:23801").0,
            vec!["http://127.0.0.1:23800,http://127.0.0.1:23801".to_string()]
        );
    }
}
