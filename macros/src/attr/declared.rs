//! The declarations inside `#[handler(...)]`: `store(...)`, `window(...)`, `table(...)` and
//! `global_table(...)`, each checked against the form it must have.

use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Token, Type};

use super::{check_topic, skip_value, Errors, StoreAttr, TableAttr, WindowAttr, WindowKind};

/// A declaration's numeric settings: (setting, its literal).
type Numbers = Vec<(Ident, LitInt)>;

/// How a `store(...)` or `window(...)` declaration reads, for its messages.
struct Form {
    /// The attribute's keyword.
    kw: &'static str,
    /// What it declares.
    noun: &'static str,
    /// Its shape, for a misplaced entry.
    shape: &'static str,
    /// A complete example.
    example: &'static str,
    /// Its settings besides `key`, `value` and `name`: whole numbers of milliseconds.
    numbers: &'static [&'static str],
    /// Its text settings (topic names).
    texts: &'static [&'static str],
    /// It declares a key type (a table's keys are text).
    has_key: bool,
    /// Every setting, for an unknown one.
    expected: &'static str,
}

const STORE: Form = Form {
    kw: "store",
    noun: "store",
    shape: "StoreType, key = K, value = V",
    example: "store(Totals, key = str, value = u64)",
    numbers: &[],
    texts: &[],
    has_key: true,
    expected: "key, value or name",
};

const WINDOW: Form = Form {
    kw: "window",
    noun: "window store",
    shape: "WindowType, key = K, value = V, size_ms = N",
    example: "window(PerMinute, key = String, value = u64, size_ms = 60000)",
    numbers: &["size_ms", "advance_ms", "gap_ms", "grace_ms"],
    texts: &[],
    has_key: true,
    expected: "key, value, size_ms, advance_ms, gap_ms, grace_ms or name",
};

const TABLE: Form = Form {
    kw: "table",
    noun: "table",
    shape: "TableType, topic = \"...\", value = V",
    example: "table(Customers, topic = \"customers\", value = Customer)",
    numbers: &[],
    texts: &["topic"],
    has_key: false,
    expected: "topic, value or name",
};

const GLOBAL_TABLE: Form = Form {
    kw: "global_table",
    noun: "global table",
    shape: "TableType, topic = \"...\", value = V",
    example: "global_table(Countries, topic = \"countries\", value = Country)",
    numbers: &[],
    texts: &["topic"],
    has_key: false,
    expected: "topic, value or name",
};

pub(super) fn parse_table(
    meta: &ParseNestedMeta<'_>,
    kw: &Ident,
    errors: &mut Errors,
    global: bool,
) -> syn::Result<Option<TableAttr>> {
    let form = if global { &GLOBAL_TABLE } else { &TABLE };
    let Some(d) = parse_declared(meta, kw, errors, form)? else {
        return Ok(None);
    };
    let Some((_, topic)) = d.texts.into_iter().find(|(id, _)| id == "topic") else {
        errors.at(
            d.store.ident.span(),
            format!(
                "{} `{}` needs `topic = \"...\"`: {}",
                form.kw, d.store.ident, form.example
            ),
        );
        return Ok(None);
    };
    check_topic(errors, &topic);
    Ok(Some(TableAttr {
        store: d.store,
        topic,
        global,
    }))
}

pub(super) fn parse_store(
    meta: &ParseNestedMeta<'_>,
    store_kw: &Ident,
    errors: &mut Errors,
) -> syn::Result<Option<StoreAttr>> {
    Ok(parse_declared(meta, store_kw, errors, &STORE)?.map(|d| d.store))
}

/// A parsed `store(...)`, `window(...)` or `table(...)`.
struct Declared {
    store: StoreAttr,
    numbers: Numbers,
    texts: Vec<(Ident, LitStr)>,
}

/// Parses `Type, key = K, value = V, name = "..."` and the form's numbers; `None` (with the
/// errors recorded) when the type, key or value is missing.
fn parse_declared(
    meta: &ParseNestedMeta<'_>,
    kw: &Ident,
    errors: &mut Errors,
    form: &Form,
) -> syn::Result<Option<Declared>> {
    let mut ident: Option<Ident> = None;
    let mut name: Option<LitStr> = None;
    let mut key: Option<Type> = None;
    let mut value: Option<Type> = None;
    let mut numbers: Numbers = Vec::new();
    let mut texts: Vec<(Ident, LitStr)> = Vec::new();
    meta.parse_nested_meta(|inner| {
        let Some(id) = inner.path.get_ident().cloned() else {
            errors.at(inner.path.span(), format!("expected `{}`", form.shape));
            return skip_value(&inner);
        };
        if !inner.input.peek(Token![=]) {
            if ident.is_some() {
                errors.at(id.span(), format!("a {} has one type name", form.noun));
            }
            ident = Some(id);
            return Ok(());
        }
        match id.to_string().as_str() {
            "key" if !form.has_key => {
                errors.at(
                    id.span(),
                    format!(
                        "a {}'s keys are its records' keys, as text: remove `key`",
                        form.noun
                    ),
                );
                return skip_value(&inner);
            }
            n if form.texts.contains(&n) => {
                if texts.iter().any(|(t, _)| *t == id) {
                    errors.at(id.span(), format!("duplicate `{id}` in {}(...)", form.kw));
                }
                texts.push((id, inner.value()?.parse()?));
            }
            "key" => key = Some(inner.value()?.parse()?),
            "value" => value = Some(inner.value()?.parse()?),
            "name" => name = Some(inner.value()?.parse()?),
            n if form.numbers.contains(&n) => {
                let lit: LitInt = inner.value()?.parse()?;
                let zero_ok = n == "grace_ms";
                match lit.base10_parse::<u64>() {
                    Ok(v) if v > 0 || zero_ok => {}
                    _ => errors.at(
                        lit.span(),
                        format!(
                            "`{id}` must be a whole number of milliseconds{}",
                            if zero_ok { "" } else { " greater than 0" }
                        ),
                    ),
                }
                if numbers.iter().any(|(n, _)| *n == id) {
                    errors.at(id.span(), format!("duplicate `{id}` in {}(...)", form.kw));
                }
                numbers.push((id, lit));
            }
            other => {
                errors.at(
                    id.span(),
                    format!(
                        "unknown {} setting `{other}`; expected {}",
                        form.kw, form.expected
                    ),
                );
                return skip_value(&inner);
            }
        }
        Ok(())
    })?;
    let Some(ident) = ident else {
        errors.at(
            kw.span(),
            format!("a {} needs a type name: {}", form.noun, form.example),
        );
        return Ok(None);
    };
    if !form.has_key {
        key = Some(syn::parse_quote!(str));
    }
    let (Some(key), Some(value)) = (key, value) else {
        let needs = if form.has_key {
            "both `key = <type>` and `value = <type>`"
        } else {
            "`value = <type>`"
        };
        errors.at(ident.span(), format!("{} `{ident}` needs {needs}", form.kw));
        return Ok(None);
    };
    let name = name.map_or_else(|| snake_case(&ident.to_string()), |n| n.value());
    Ok(Some(Declared {
        store: StoreAttr {
            ident,
            name,
            key,
            value,
        },
        numbers,
        texts,
    }))
}

/// True (and remembered in `declared`) if no store, window store or table declared so far
/// has `store`'s type or name; else records the error.
pub(super) fn unique_store(
    errors: &mut Errors,
    declared: &mut Vec<(Ident, String)>,
    store: &StoreAttr,
) -> bool {
    let (ident, name) = (&store.ident, &store.name);
    match declared.iter().find(|(i, n)| i == ident || n == name) {
        Some((prev, _)) => {
            errors.at(
                ident.span(),
                format!("store `{name}` is declared twice (first as `{prev}`)"),
            );
            false
        }
        None => {
            declared.push((ident.clone(), name.clone()));
            true
        }
    }
}

pub(super) fn parse_window(
    meta: &ParseNestedMeta<'_>,
    window_kw: &Ident,
    errors: &mut Errors,
) -> syn::Result<Option<WindowAttr>> {
    let Some(Declared { store, numbers, .. }) = parse_declared(meta, window_kw, errors, &WINDOW)?
    else {
        return Ok(None);
    };
    let number = |n: &str| {
        numbers
            .iter()
            .find(|(id, _)| id == n)
            .map(|(id, lit)| (id.span(), lit.base10_parse::<u64>().unwrap_or(1)))
    };
    let kind = match (number("size_ms"), number("advance_ms"), number("gap_ms")) {
        (Some((_, size_ms)), None, None) => WindowKind::Tumbling { size_ms },
        (Some((_, size_ms)), Some((span, advance_ms)), None) => {
            if advance_ms > size_ms {
                errors.at(span, "`advance_ms` must not exceed `size_ms`");
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            }
        }
        (None, None, Some((_, gap_ms))) => WindowKind::Session { gap_ms },
        (None, Some((span, _)), _) => {
            errors.at(span, "`advance_ms` needs `size_ms` (hopping windows)");
            return Ok(None);
        }
        (Some((span, _)), _, Some(_)) => {
            errors.at(
                span,
                "a window store has `size_ms` (tumbling, hopping) or `gap_ms` (session), not both",
            );
            return Ok(None);
        }
        (None, None, None) => {
            let ident = &store.ident;
            errors.at(ident.span(), format!("window `{ident}` needs `size_ms = N` (tumbling; with `advance_ms`, hopping) or `gap_ms = N` (session)"));
            return Ok(None);
        }
    };
    let grace_ms = number("grace_ms").map_or(0, |(_, g)| g);
    Ok(Some(WindowAttr {
        store,
        kind,
        grace_ms,
    }))
}

fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
