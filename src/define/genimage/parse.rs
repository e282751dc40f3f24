//! The libconfuse syntax genimage configs are written in, read into a plain tree: sections
//! (`name { … }`, `name "title" { … }`), assignments (`key = value`, `key = { a, b }`,
//! `key += …`), `#`, `//` and `/* */` comments, double-quoted strings with escapes,
//! single-quoted strings, unquoted words, `${VAR}` / `${VAR:-default}` substitution and
//! `include("file")` (spliced where it stands, as libconfuse does).
//!
//! Not for meaning: which keys exist and what their values are is `config`'s business.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, Result};

/// libconfuse's limit on nested `include`s.
const MAX_INCLUDE_DEPTH: usize = 10;

/// Where something was written: file as shown to the user, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: Rc<str>,
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// A definition-file error at this position.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::DefinitionFile {
            file: self.file.to_string(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

/// `key = value`, `key = { a, b }` or `key += …`.
#[derive(Debug, Clone)]
pub struct Assign {
    pub key: String,
    pub pos: Pos,
    pub values: Vec<String>,
    /// Written with braces.
    pub list: bool,
    /// Written with `+=`.
    pub append: bool,
}

/// `name { … }` or `name title { … }`.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub title: Option<String>,
    pub pos: Pos,
    pub items: Vec<Item>,
}

/// One entry of a section body.
#[derive(Debug, Clone)]
pub enum Item {
    Assign(Assign),
    Section(Section),
}

/// Looks up environment variables for `${VAR}`.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses a config file (and the files it includes) into its top-level items.
pub fn parse_file(path: &Path, env: Env<'_>, defines: &[(String, String)]) -> Result<Vec<Item>> {
    let mut lexer = Lexer::new(env);
    lexer.defines = defines.to_vec();
    lexer.push_file(path, None)?;
    Parser { lexer }.body(None)
}

/// Parses config text; `name` is what errors call the file.
#[cfg(test)]
pub fn parse_str(name: &str, text: &str, env: Env<'_>) -> Result<Vec<Item>> {
    let mut lexer = Lexer::new(env);
    lexer.push_text(name, text, None);
    Parser { lexer }.body(None)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Open,
    Close,
    LParen,
    RParen,
    Eq,
    PlusEq,
    Comma,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Str(s) => format!("`{s}`"),
            Tok::Open => "`{`".into(),
            Tok::Close => "`}`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Eq => "`=`".into(),
            Tok::PlusEq => "`+=`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eof => "the end of the file".into(),
        }
    }
}

/// One file being read.
struct Source {
    name: Rc<str>,
    dir: Option<PathBuf>,
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
}

impl Source {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.at + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.at).copied()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn pos(&self) -> Pos {
        Pos {
            file: self.name.clone(),
            line: self.line,
            column: self.column,
        }
    }
}

struct Lexer<'e> {
    stack: Vec<Source>,
    env: Env<'e>,
    /// Position of the end of the last file, for errors at EOF.
    end: Option<Pos>,
    /// `--define NAME=VALUE`: template variables filled in before parsing.
    defines: Vec<(String, String)>,
}

/// Characters that end an unquoted word.
fn ends_word(c: char) -> bool {
    matches!(
        c,
        ' ' | '#' | '"' | '\'' | '\t' | '\n' | '\r' | '=' | '{' | '}' | '(' | ')' | '+' | ',' | '*'
    )
}

impl<'e> Lexer<'e> {
    fn new(env: Env<'e>) -> Self {
        Lexer {
            stack: Vec::new(),
            env,
            end: None,
            defines: Vec::new(),
        }
    }

    fn push_text(&mut self, name: &str, text: &str, dir: Option<PathBuf>) {
        self.stack.push(Source {
            name: Rc::from(name),
            dir,
            chars: text.chars().collect(),
            at: 0,
            line: 1,
            column: 1,
        });
    }

    /// Opens a config file; `from` is the include call that named it.
    fn push_file(&mut self, path: &Path, from: Option<&Pos>) -> Result<()> {
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            let pos = from.cloned().unwrap_or_else(|| self.pos());
            return Err(pos.error("includes nested too deeply"));
        }
        let text = crate::io::read_small_text(path, "genimage config").map_err(|e| match from {
            Some(p) => p.error(format!("cannot include {}: {e}", path.display())),
            None => e,
        })?;
        let dir = path.parent().map(Path::to_path_buf);
        let text = fill_templates(path, &text, &self.defines)?;
        self.push_text(&path.display().to_string(), &text, dir);
        Ok(())
    }

    /// Where an included file named `name` is: as given (relative to the working directory,
    /// as genimage resolves it), else beside the file that includes it.
    fn resolve_include(&self, name: &str) -> PathBuf {
        let p = PathBuf::from(name);
        if p.is_absolute() || p.exists() {
            return p;
        }
        match self.stack.last().and_then(|s| s.dir.as_ref()) {
            Some(dir) if dir.join(&p).exists() => dir.join(p),
            _ => p,
        }
    }

    fn pos(&self) -> Pos {
        match self.stack.last() {
            Some(s) => s.pos(),
            None => self.end.clone().unwrap_or(Pos {
                file: Rc::from(""),
                line: 1,
                column: 1,
            }),
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, Pos)> {
        loop {
            let Some(src) = self.stack.last_mut() else {
                return Ok((Tok::Eof, self.pos()));
            };
            let Some(c) = src.peek(0) else {
                self.end = Some(src.pos());
                self.stack.pop();
                continue;
            };
            let pos = src.pos();
            match c {
                ' ' | '\t' | '\n' | '\r' => {
                    src.bump();
                }
                '#' => skip_line(src),
                '/' if src.peek(1) == Some('/') => skip_line(src),
                '/' if src.peek(1) == Some('*') => skip_block(src, &pos)?,
                '{' | '}' | '(' | ')' | '=' | ',' => {
                    src.bump();
                    let t = match c {
                        '{' => Tok::Open,
                        '}' => Tok::Close,
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '=' => Tok::Eq,
                        _ => Tok::Comma,
                    };
                    return Ok((t, pos));
                }
                '+' if src.peek(1) == Some('=') => {
                    src.bump();
                    src.bump();
                    return Ok((Tok::PlusEq, pos));
                }
                '"' => {
                    src.bump();
                    let s = double_quoted(src, self.env, &pos)?;
                    return Ok((Tok::Str(s), pos));
                }
                '\'' => {
                    src.bump();
                    let s = single_quoted(src, &pos)?;
                    return Ok((Tok::Str(s), pos));
                }
                '$' if src.peek(1) == Some('{') => {
                    let s = substitution(src, self.env);
                    return Ok((Tok::Str(s), pos));
                }
                c if ends_word(c) => {
                    // libconfuse eats characters no rule matches.
                    src.bump();
                }
                _ => {
                    let mut s = String::new();
                    while let Some(c) = src.peek(0).filter(|c| !ends_word(*c)) {
                        s.push(c);
                        src.bump();
                    }
                    return Ok((Tok::Str(s), pos));
                }
            }
        }
    }
}

fn skip_line(src: &mut Source) {
    while src.peek(0).is_some_and(|c| c != '\n') {
        src.bump();
    }
}

fn skip_block(src: &mut Source, start: &Pos) -> Result<()> {
    src.bump();
    src.bump();
    loop {
        match src.bump() {
            None => return Err(start.error("unterminated comment: `/*` without `*/`")),
            Some('*') if src.peek(0) == Some('/') => {
                src.bump();
                return Ok(());
            }
            Some(_) => {}
        }
    }
}

/// `${NAME}` or `${NAME:-default}` at the cursor; unset without a default is empty.
fn substitution(src: &mut Source, env: Env<'_>) -> String {
    src.bump();
    src.bump();
    let mut inner = String::new();
    while let Some(c) = src.bump() {
        if c == '}' {
            break;
        }
        inner.push(c);
    }
    match inner.split_once(":-") {
        Some((name, default)) => env(name).unwrap_or_else(|| default.to_string()),
        None => env(&inner).unwrap_or_default(),
    }
}

fn double_quoted(src: &mut Source, env: Env<'_>, start: &Pos) -> Result<String> {
    let mut s = String::new();
    loop {
        let Some(c) = src.peek(0) else {
            return Err(start.error("unterminated string: `\"` without its closing `\"`"));
        };
        match c {
            '"' => {
                src.bump();
                return Ok(s);
            }
            '$' if src.peek(1) == Some('{') && src.chars[src.at..].contains(&'}') => {
                s.push_str(&substitution(src, env));
            }
            '\\' => {
                let at = src.pos();
                src.bump();
                escape(src, &mut s, &at)?;
            }
            _ => {
                s.push(c);
                src.bump();
            }
        }
    }
}

/// One escape sequence after a backslash inside double quotes.
fn escape(src: &mut Source, s: &mut String, at: &Pos) -> Result<()> {
    let Some(c) = src.bump() else {
        return Ok(());
    };
    match c {
        '\n' => {}
        '0'..='7' => {
            let mut v = c.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match src.peek(0).and_then(|d| d.to_digit(8)) {
                    Some(d) => {
                        v = v * 8 + d;
                        src.bump();
                    }
                    None => break,
                }
            }
            if src.peek(0).is_some_and(|d| d.is_ascii_digit()) || v > 0xFF {
                return Err(at.error("bad escape sequence in string"));
            }
            s.push(char::from(v as u8));
        }
        '8' | '9' => return Err(at.error("bad escape sequence in string")),
        'x' => {
            let mut v = 0u32;
            let mut n = 0;
            while n < 2 {
                match src.peek(0).and_then(|d| d.to_digit(16)) {
                    Some(d) => {
                        v = v * 16 + d;
                        src.bump();
                        n += 1;
                    }
                    None => break,
                }
            }
            if n == 0 {
                s.push('x');
            } else {
                s.push(char::from(v as u8));
            }
        }
        'n' => s.push('\n'),
        'r' => s.push('\r'),
        'b' => s.push('\u{8}'),
        'f' => s.push('\u{c}'),
        'a' => s.push('\u{7}'),
        'e' => s.push('\u{1b}'),
        't' => s.push('\t'),
        'v' => s.push('\u{b}'),
        other => s.push(other),
    }
    Ok(())
}

fn single_quoted(src: &mut Source, start: &Pos) -> Result<String> {
    let mut s = String::new();
    loop {
        let Some(c) = src.bump() else {
            return Err(start.error("unterminated string: `'` without its closing `'`"));
        };
        match c {
            '\'' => return Ok(s),
            '\\' => match src.peek(0) {
                Some('\n') => {
                    src.bump();
                }
                Some(q @ ('\\' | '\'')) => {
                    s.push(q);
                    src.bump();
                }
                _ => s.push('\\'),
            },
            _ => s.push(c),
        }
    }
}

struct Parser<'e> {
    lexer: Lexer<'e>,
}

impl Parser<'_> {
    /// Items until the closing brace of `open` (or the end of input at the top level).
    fn body(&mut self, open: Option<(&str, &Pos)>) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        loop {
            let (tok, pos) = self.lexer.next()?;
            match tok {
                Tok::Eof => {
                    return match open {
                        None => Ok(items),
                        Some((what, at)) => Err(at.error(format!(
                            "`{what}` is never closed: missing `}}` before the end of the file"
                        ))),
                    };
                }
                Tok::Close if open.is_some() => return Ok(items),
                Tok::Close => return Err(pos.error("unexpected closing brace `}`")),
                Tok::Str(name) => {
                    if let Some(item) = self.item(name, pos)? {
                        items.push(item);
                    }
                }
                other => {
                    return Err(pos.error(format!(
                        "unexpected {}; expected an option or section name",
                        other.describe()
                    )));
                }
            }
        }
    }

    /// What follows a name: an assignment, a section, or a function call.
    fn item(&mut self, name: String, pos: Pos) -> Result<Option<Item>> {
        let (tok, at) = self.lexer.next()?;
        match tok {
            Tok::Eq | Tok::PlusEq => {
                let (values, list) = self.value(&name)?;
                Ok(Some(Item::Assign(Assign {
                    key: name,
                    pos,
                    values,
                    list,
                    append: tok == Tok::PlusEq,
                })))
            }
            Tok::Open => self.section(name, None, pos).map(Some),
            Tok::Str(title) => match self.lexer.next()? {
                (Tok::Open, _) => self.section(name, Some(title), pos).map(Some),
                (other, _) => Err(pos.error(format!(
                    "missing `=` after option `{name}`, or `{{` to open section `{name} {title}` \
                     (found {} after `{title}`)",
                    other.describe()
                ))),
            },
            Tok::LParen => {
                self.call(&name, &pos)?;
                Ok(None)
            }
            other => Err(at.error(format!(
                "missing `=` after option `{name}` (found {})",
                other.describe()
            ))),
        }
    }

    fn section(&mut self, name: String, title: Option<String>, pos: Pos) -> Result<Item> {
        let shown = match &title {
            Some(t) => format!("{name} {t}"),
            None => name.clone(),
        };
        let items = self.body(Some((&shown, &pos)))?;
        Ok(Item::Section(Section {
            name,
            title,
            pos,
            items,
        }))
    }

    /// A value after `=`: one word or string, or a braced list.
    fn value(&mut self, key: &str) -> Result<(Vec<String>, bool)> {
        let (tok, pos) = self.lexer.next()?;
        match tok {
            Tok::Str(s) => Ok((vec![s], false)),
            Tok::Open => self.list(key).map(|v| (v, true)),
            other => Err(pos.error(format!(
                "missing value for option `{key}` (found {})",
                other.describe()
            ))),
        }
    }

    fn list(&mut self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let (tok, pos) = self.lexer.next()?;
            match tok {
                Tok::Close => return Ok(out),
                Tok::Str(s) => out.push(s),
                other => {
                    return Err(pos.error(format!(
                        "unexpected {} in the list of `{key}`",
                        other.describe()
                    )));
                }
            }
            let (tok, pos) = self.lexer.next()?;
            match tok {
                Tok::Comma => {}
                Tok::Close => return Ok(out),
                other => {
                    return Err(pos.error(format!(
                        "unexpected {} in the list of `{key}`; expected `,` or `}}`",
                        other.describe()
                    )));
                }
            }
        }
    }

    /// `name(arg, …)`; only `include` exists.
    fn call(&mut self, name: &str, pos: &Pos) -> Result<()> {
        let mut args = Vec::new();
        loop {
            let (tok, p) = self.lexer.next()?;
            match tok {
                Tok::RParen => break,
                Tok::Str(s) => args.push(s),
                Tok::Comma if !args.is_empty() => {}
                other => {
                    return Err(p.error(format!(
                        "syntax error in call of function `{name}` at {}",
                        other.describe()
                    )));
                }
            }
        }
        if name != "include" {
            return Err(pos.error(format!("no such function `{name}`")));
        }
        let [file] = args.as_slice() else {
            return Err(pos.error("include() takes exactly one file name"));
        };
        let path = self.lexer.resolve_include(file);
        self.lexer.push_file(&path, Some(pos))
    }
}

/// Fills template variables (`%NAME%`, and bare `NAME` for names given as upper-case
/// identifiers) from `defines`, then refuses what is left unfilled: a `%NAME%`, or an
/// upper-case `WORD_WITH_UNDERSCORES` given as a value, which a post-image script is meant to
/// replace. A file holding only a path (a symbolic link checked out as text) is refused too.
pub fn fill_templates(path: &Path, text: &str, defines: &[(String, String)]) -> Result<String> {
    let at = |line: usize| Pos {
        file: Rc::from(path.display().to_string()),
        line,
        column: 1,
    };
    let body = text.trim();
    if !body.is_empty()
        && !body.contains(char::is_whitespace)
        && !body.contains(['{', '}', '=', '(', '"'])
        && (body.contains('/') || body.ends_with(".cfg"))
    {
        let target = path.parent().unwrap_or(Path::new("")).join(body);
        return Err(at(1).error(format!(
            "the file holds only the path `{body}`: a symbolic link checked out as a text \
             file; pass the file it points to ({})",
            target.display()
        )));
    }
    let mut out = text.to_string();
    for (name, value) in defines {
        out = out.replace(&format!("%{name}%"), value);
        if is_template_word(name) {
            out = replace_word(&out, name, value);
        }
    }
    for (i, line) in out.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("");
        let mut rest = code;
        while let Some(start) = rest.find('%') {
            let tail = &rest[start + 1..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if len > 0 && tail[len..].starts_with('%') {
                let name = &tail[..len];
                return Err(at(i + 1).error(format!(
                    "template variable %{name}% is not filled (a post-image script fills it); \
                     pass --define {name}=VALUE"
                )));
            }
            rest = tail;
        }
        if let Some((_, value)) = code.split_once('=') {
            let v = value.trim();
            if is_template_word(v) {
                return Err(at(i + 1).error(format!(
                    "template variable {v} is not filled (a post-image script fills it); pass \
                     --define {v}=VALUE"
                )));
            }
        }
    }
    Ok(out)
}

/// An upper-case identifier with an underscore (`UUID_TMP`), as templates name their holes.
fn is_template_word(w: &str) -> bool {
    w.len() >= 3
        && w.contains('_')
        && w.starts_with(|c: char| c.is_ascii_uppercase())
        && w.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `text` with every whole-word `word` replaced.
fn replace_word(text: &str, word: &str, value: &str) -> String {
    let is_id = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(is_id) || after.is_some_and(is_id) {
            out.push_str(word);
        } else {
            out.push_str(value);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "BOARD").then(|| "pi4".to_string())
    }

    fn parse(text: &str) -> Result<Vec<Item>> {
        parse_str("t.cfg", text, &env)
    }

    fn assign(item: &Item) -> &Assign {
        match item {
            Item::Assign(a) => a,
            Item::Section(s) => panic!("section {}", s.name),
        }
    }

    fn section(item: &Item) -> &Section {
        match item {
            Item::Section(s) => s,
            Item::Assign(a) => panic!("assign {}", a.key),
        }
    }

    #[test]
    fn sections_assignments_lists_and_comments() {
        let items = parse(
            "# a comment\nimage boot.vfat {\n  vfat { files = { \"a\", 'b c', d, } } // x\n  /* multi\n line */ size = 32M\n}\nimage \"x\" { hdimage {} }\n",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        let img = section(&items[0]);
        assert_eq!(img.name, "image");
        assert_eq!(img.title.as_deref(), Some("boot.vfat"));
        assert_eq!(img.pos.line, 2);
        let vfat = section(&img.items[0]);
        let files = assign(&vfat.items[0]);
        assert_eq!(files.values, ["a", "b c", "d"]);
        assert!(files.list);
        let size = assign(&img.items[1]);
        assert_eq!(
            (size.key.as_str(), size.values[0].as_str()),
            ("size", "32M")
        );
        assert_eq!((size.pos.line, size.pos.column), (5, 10));
        assert_eq!(section(&items[1]).title.as_deref(), Some("x"));
    }

    #[test]
    fn strings_escape_and_substitute() {
        let items = parse(
            "a = \"x\\ty\\\"z\\101\\x41\"\nb = \"${BOARD}-${NOPE}-${NOPE:-d}\"\nc = ${BOARD}\nd = 'p\\'q\\n'\ne += f\n",
        )
        .unwrap();
        let v: Vec<&str> = items.iter().map(|i| assign(i).values[0].as_str()).collect();
        assert_eq!(v, ["x\ty\"zAA", "pi4--d", "pi4", "p'q\\n", "f"]);
        assert!(assign(&items[4]).append);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("image a {\n  size = 1\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.cfg:1:1: `image a` is never closed: missing `}` before the end of the file"
        );
        let e = parse("a = 1\n}\n").unwrap_err().to_string();
        assert_eq!(e, "t.cfg:2:1: unexpected closing brace `}`");
        let e = parse("image a {\n  size 1\n}").unwrap_err().to_string();
        assert!(
            e.starts_with("t.cfg:2:3: missing `=` after option `size`"),
            "{e}"
        );
        let e = parse("a = \"open\n").unwrap_err().to_string();
        assert!(e.starts_with("t.cfg:1:5: unterminated string"), "{e}");
        let e = parse("frob(\"x\")").unwrap_err().to_string();
        assert_eq!(e, "t.cfg:1:1: no such function `frob`");
    }

    #[test]
    fn includes_splice_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inc.cfg"), "size = 8M\n").unwrap();
        let main = dir.path().join("main.cfg");
        std::fs::write(&main, "image a {\n  include(\"inc.cfg\")\n  name = x\n}\n").unwrap();
        let items = parse_file(&main, &env, &[]).unwrap();
        let img = section(&items[0]);
        assert_eq!(img.items.len(), 2);
        let size = assign(&img.items[0]);
        assert!(size.pos.file.ends_with("inc.cfg"));
        assert_eq!(size.pos.line, 1);
        let e = parse("include(\"/nonexistent/x.cfg\")")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.cfg:1:1: cannot include /nonexistent/x.cfg"),
            "{e}"
        );
    }
}
