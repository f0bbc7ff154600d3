//! Parses and checks `#[handler(...)]`, collecting every error.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, ExprArray, Ident, Lit, LitInt, LitStr, Token, Type};

mod declared;

use declared::{parse_store, parse_table, parse_window, unique_store};

/// Everything `#[handler(...)]` declares.
pub(crate) struct HandlerAttrs {
    pub(crate) topics: Vec<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) key: Option<Type>,
    pub(crate) value: Type,
    pub(crate) stores: Vec<StoreAttr>,
    pub(crate) batch_size: Option<LitInt>,
    pub(crate) linger_ms: Option<LitInt>,
    pub(crate) queue_capacity: Option<LitInt>,
    pub(crate) at_most_once: bool,
    pub(crate) max_attempts: Option<LitInt>,
    pub(crate) backoff_ms: Option<LitInt>,
    pub(crate) max_backoff_ms: Option<LitInt>,
    /// `Some("")` turns dead letters off.
    pub(crate) dead_letter_topic: Option<LitStr>,
    pub(crate) keep_key_order: Option<syn::LitBool>,
    /// `event_time = field`: the decoded value's field holding the event time (ms).
    pub(crate) event_time: Option<syn::Member>,
    pub(crate) windows: Vec<WindowAttr>,
    /// `Some("")` drops late records.
    pub(crate) late_topic: Option<LitStr>,
    pub(crate) idle_close_after_ms: Option<LitInt>,
    pub(crate) window_updates: bool,
    pub(crate) tables: Vec<TableAttr>,
}

/// `table(Name, topic = "...", value = V, name = "...")`, or `global_table(...)`.
pub(crate) struct TableAttr {
    /// Its type, name and value, as a store's (its key is `str`).
    pub(crate) store: StoreAttr,
    pub(crate) topic: LitStr,
    pub(crate) global: bool,
}

/// `window(Name, key = K, value = V, size_ms = N [, advance_ms = N] | gap_ms = N,
/// grace_ms = N, name = "...")`.
pub(crate) struct WindowAttr {
    /// Its type, name, key and value, as a store's.
    pub(crate) store: StoreAttr,
    pub(crate) kind: WindowKind,
    pub(crate) grace_ms: u64,
}

pub(crate) enum WindowKind {
    Tumbling { size_ms: u64 },
    Hopping { size_ms: u64, advance_ms: u64 },
    Session { gap_ms: u64 },
}

/// `store(Name, key = K, value = V, name = "...")`.
pub(crate) struct StoreAttr {
    pub(crate) ident: Ident,
    pub(crate) name: String,
    pub(crate) key: Type,
    pub(crate) value: Type,
}

/// Collects errors so that all of them are reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }
}

/// One setting that may be given once.
struct Once<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Once<T> {
    fn new(name: &'static str) -> Self {
        Self { name, value: None }
    }

    fn set(&mut self, errors: &mut Errors, span: Span, value: T) {
        if self.value.is_some() {
            errors.at(
                span,
                format!("duplicate `{}` in #[handler(...)]", self.name),
            );
        } else {
            self.value = Some(value);
        }
    }
}

impl HandlerAttrs {
    pub(crate) fn from_input(input: &DeriveInput) -> syn::Result<Self> {
        let mut p = Parser::new();
        match &input.data {
            Data::Struct(_) => {}
            Data::Enum(e) => p.errors.at(
                e.enum_token.span(),
                "#[derive(Handler)] needs a struct; an enum cannot be a handler",
            ),
            Data::Union(u) => p.errors.at(
                u.union_token.span(),
                "#[derive(Handler)] needs a struct; a union cannot be a handler",
            ),
        }
        if !input.generics.params.is_empty() {
            p.errors.at(
                input.generics.span(),
                "#[derive(Handler)] does not support generic handlers; wrap the generic type in a concrete struct",
            );
        }
        let mut seen_attr = false;
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("handler")) {
            seen_attr = true;
            let parsed = attr.parse_nested_meta(|meta| p.setting(&meta));
            if let Err(e) = parsed {
                p.errors.push(e);
            }
        }
        if !seen_attr {
            p.errors.at(
                input.ident.span(),
                "missing #[handler(...)] attribute; at least `value = <codec>` is needed, e.g. #[handler(topic = \"orders\", value = Json<Order>)]",
            );
        } else if p.value.value.is_none() {
            p.errors.at(
                input.ident.span(),
                "missing `value = <codec>` in #[handler(...)], e.g. `value = Json<Order>`, `value = Utf8` or `value = Raw`",
            );
        }
        p.finish(input)
    }
}

/// Parses one `#[handler(...)]` key.
type KeyParser = fn(&mut Parser, &Ident, &ParseNestedMeta<'_>) -> syn::Result<()>;

/// Every `#[handler(...)]` key and its parser, in the order error messages list them.
const KEYS: &[(&str, KeyParser)] = &[
    ("topic", Parser::topic),
    ("topics", Parser::topics),
    ("group", Parser::group),
    ("key", Parser::key),
    ("value", Parser::value),
    ("store", Parser::store),
    ("window", Parser::window),
    ("table", Parser::table),
    ("global_table", Parser::global_table),
    ("event_time", Parser::event_time),
    ("late_topic", Parser::late_topic),
    ("idle_close_after_ms", Parser::idle_close_after_ms),
    ("window_updates", Parser::window_updates),
    ("batch_size", Parser::batch_size),
    ("linger_ms", Parser::linger_ms),
    ("queue_capacity", Parser::queue_capacity),
    ("delivery", Parser::delivery),
    ("retry", Parser::retry),
    ("dead_letter", Parser::dead_letter),
];

/// The keys, for error messages: `topic, topics, ...`.
fn key_list() -> String {
    KEYS.iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the `#[handler(...)]` attributes said so far, and every mistake found.
struct Parser {
    errors: Errors,
    topics: Vec<LitStr>,
    group: Once<LitStr>,
    key: Once<Type>,
    value: Once<Type>,
    stores: Vec<StoreAttr>,
    batch_size: Once<LitInt>,
    linger_ms: Once<LitInt>,
    queue_capacity: Once<LitInt>,
    delivery: Once<bool>,
    max_attempts: Once<LitInt>,
    backoff_ms: Once<LitInt>,
    max_backoff_ms: Once<LitInt>,
    dead_letter_topic: Once<LitStr>,
    keep_key_order: Once<syn::LitBool>,
    event_time: Once<syn::Member>,
    windows: Vec<WindowAttr>,
    tables: Vec<TableAttr>,
    /// Every store, window store and table so far: (type, store name).
    declared: Vec<(Ident, String)>,
    late_topic: Once<LitStr>,
    idle_close_after_ms: Once<LitInt>,
    window_updates: Once<bool>,
}

impl Parser {
    fn new() -> Self {
        Self {
            errors: Errors::default(),
            topics: Vec::new(),
            group: Once::new("group"),
            key: Once::new("key"),
            value: Once::new("value"),
            stores: Vec::new(),
            batch_size: Once::new("batch_size"),
            linger_ms: Once::new("linger_ms"),
            queue_capacity: Once::new("queue_capacity"),
            delivery: Once::new("delivery"),
            max_attempts: Once::new("max_attempts"),
            backoff_ms: Once::new("backoff_ms"),
            max_backoff_ms: Once::new("max_backoff_ms"),
            dead_letter_topic: Once::new("dead_letter topic"),
            keep_key_order: Once::new("keep_key_order"),
            event_time: Once::new("event_time"),
            windows: Vec::new(),
            tables: Vec::new(),
            declared: Vec::new(),
            late_topic: Once::new("late_topic"),
            idle_close_after_ms: Once::new("idle_close_after_ms"),
            window_updates: Once::new("window_updates"),
        }
    }

    /// One `key = ...` or `key(...)` of the attribute.
    fn setting(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(ident) = meta.path.get_ident().cloned() else {
            self.errors.at(
                meta.path.span(),
                format!("unknown handler attribute; expected one of: {}", key_list()),
            );
            return skip_value(meta);
        };
        let name = ident.to_string();
        match KEYS.iter().find(|(key, _)| *key == name) {
            Some((_, parse)) => parse(self, &ident, meta),
            None => {
                self.errors.at(
                    ident.span(),
                    format!(
                        "unknown handler attribute `{name}`; expected one of: {}",
                        key_list()
                    ),
                );
                skip_value(meta)
            }
        }
    }

    fn topic(&mut self, _: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit: LitStr = meta.value()?.parse()?;
        check_topic(&mut self.errors, &lit);
        self.topics.push(lit);
        Ok(())
    }

    fn topics(&mut self, _: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let arr: ExprArray = meta.value()?.parse()?;
        for el in arr.elems {
            match el {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(lit), ..
                }) => {
                    check_topic(&mut self.errors, &lit);
                    self.topics.push(lit);
                }
                other => self
                    .errors
                    .at(other.span(), "a topic name must be a string literal"),
            }
        }
        Ok(())
    }

    fn group(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit: LitStr = meta.value()?.parse()?;
        if lit.value().trim().is_empty() {
            self.errors
                .at(lit.span(), "the consumer group must not be empty");
        }
        self.group.set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn key(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let ty = meta.value()?.parse::<Type>()?;
        self.key.set(&mut self.errors, ident.span(), ty);
        Ok(())
    }

    fn value(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let ty = meta.value()?.parse::<Type>()?;
        self.value.set(&mut self.errors, ident.span(), ty);
        Ok(())
    }

    fn store(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        if let Some(store) = parse_store(meta, ident, &mut self.errors)? {
            if unique_store(&mut self.errors, &mut self.declared, &store) {
                self.stores.push(store);
            }
        }
        Ok(())
    }

    fn window(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        if let Some(window) = parse_window(meta, ident, &mut self.errors)? {
            if unique_store(&mut self.errors, &mut self.declared, &window.store) {
                self.windows.push(window);
            }
        }
        Ok(())
    }

    fn table(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        self.any_table(ident, meta, false)
    }

    fn global_table(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        self.any_table(ident, meta, true)
    }

    fn any_table(
        &mut self,
        ident: &Ident,
        meta: &ParseNestedMeta<'_>,
        global: bool,
    ) -> syn::Result<()> {
        if let Some(table) = parse_table(meta, ident, &mut self.errors, global)? {
            if unique_store(&mut self.errors, &mut self.declared, &table.store) {
                self.tables.push(table);
            }
        }
        Ok(())
    }

    fn event_time(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let field: syn::Member = meta.value()?.parse()?;
        self.event_time.set(&mut self.errors, ident.span(), field);
        Ok(())
    }

    fn late_topic(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit: LitStr = meta.value()?.parse()?;
        if !lit.value().is_empty() {
            let example = lit.value().replace("{topic}", "orders");
            check_topic(&mut self.errors, &LitStr::new(&example, lit.span()));
        }
        self.late_topic.set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn idle_close_after_ms(
        &mut self,
        ident: &Ident,
        meta: &ParseNestedMeta<'_>,
    ) -> syn::Result<()> {
        let lit = positive(meta, &mut self.errors)?;
        self.idle_close_after_ms
            .set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn window_updates(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let b: syn::LitBool = meta.value()?.parse()?;
        self.window_updates
            .set(&mut self.errors, ident.span(), b.value);
        Ok(())
    }

    fn batch_size(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit = positive(meta, &mut self.errors)?;
        self.batch_size.set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn linger_ms(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit: LitInt = meta.value()?.parse()?;
        if lit.base10_parse::<u64>().is_err() {
            self.errors.at(
                lit.span(),
                "`linger_ms` must be a whole number of milliseconds",
            );
        }
        self.linger_ms.set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn queue_capacity(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let lit = positive(meta, &mut self.errors)?;
        if lit.base10_parse::<usize>().is_ok_and(|n| n < 2) {
            self.errors
                .at(lit.span(), "`queue_capacity` must be at least 2");
        }
        self.queue_capacity.set(&mut self.errors, ident.span(), lit);
        Ok(())
    }

    fn delivery(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let mode: Ident = meta.value()?.parse()?;
        match mode.to_string().as_str() {
            "at_least_once" => self.delivery.set(&mut self.errors, ident.span(), false),
            "at_most_once" => self.delivery.set(&mut self.errors, ident.span(), true),
            _ => self.errors.at(
                mode.span(),
                "`delivery` is `at_least_once` or `at_most_once`",
            ),
        }
        Ok(())
    }

    fn retry(&mut self, _: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        meta.parse_nested_meta(|inner| {
            let Some(id) = inner.path.get_ident().cloned() else {
                self.errors.at(
                    inner.path.span(),
                    "expected max_attempts, backoff_ms or max_backoff_ms",
                );
                return skip_value(&inner);
            };
            let name = id.to_string();
            if !matches!(
                name.as_str(),
                "max_attempts" | "backoff_ms" | "max_backoff_ms"
            ) {
                self.errors.at(
                    id.span(),
                    format!("unknown retry setting `{name}`; expected max_attempts, backoff_ms or max_backoff_ms"),
                );
                return skip_value(&inner);
            }
            let lit: LitInt = inner.value()?.parse()?;
            if lit.base10_parse::<u32>().is_err() {
                self.errors.at(lit.span(), "must be a whole number");
            }
            let slot = match name.as_str() {
                "max_attempts" => &mut self.max_attempts,
                "backoff_ms" => &mut self.backoff_ms,
                _ => &mut self.max_backoff_ms,
            };
            slot.set(&mut self.errors, id.span(), lit);
            Ok(())
        })
    }

    fn dead_letter(&mut self, ident: &Ident, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.input.peek(Token![=]) {
            let on: syn::LitBool = meta.value()?.parse()?;
            if on.value {
                self.errors.at(
                    on.span(),
                    "dead letters are on by default; write `dead_letter(topic = \"...\")` to choose the topic",
                );
            } else {
                self.dead_letter_topic.set(
                    &mut self.errors,
                    ident.span(),
                    LitStr::new("", on.span()),
                );
            }
            return Ok(());
        }
        meta.parse_nested_meta(|inner| {
            let Some(id) = inner.path.get_ident().cloned() else {
                self.errors
                    .at(inner.path.span(), "expected topic or keep_key_order");
                return skip_value(&inner);
            };
            match id.to_string().as_str() {
                "topic" => {
                    let lit: LitStr = inner.value()?.parse()?;
                    let example = lit.value().replace("{topic}", "orders");
                    check_topic(&mut self.errors, &LitStr::new(&example, lit.span()));
                    self.dead_letter_topic.set(&mut self.errors, id.span(), lit);
                }
                "keep_key_order" => {
                    let b: syn::LitBool = inner.value()?.parse()?;
                    self.keep_key_order.set(&mut self.errors, id.span(), b);
                }
                other => {
                    self.errors.at(
                        id.span(),
                        format!("unknown dead_letter setting `{other}`; expected topic or keep_key_order"),
                    );
                    return skip_value(&inner);
                }
            }
            Ok(())
        })
    }

    /// Every mistake at once, or what the attributes declare.
    fn finish(self, input: &DeriveInput) -> syn::Result<HandlerAttrs> {
        if let Some(e) = self.errors.0 {
            return Err(e);
        }
        Ok(HandlerAttrs {
            topics: self.topics,
            group: self.group.value,
            key: self.key.value,
            value: self
                .value
                .value
                .ok_or_else(|| syn::Error::new(input.ident.span(), "missing `value`"))?,
            stores: self.stores,
            batch_size: self.batch_size.value,
            linger_ms: self.linger_ms.value,
            queue_capacity: self.queue_capacity.value,
            at_most_once: self.delivery.value.unwrap_or(false),
            max_attempts: self.max_attempts.value,
            backoff_ms: self.backoff_ms.value,
            max_backoff_ms: self.max_backoff_ms.value,
            dead_letter_topic: self.dead_letter_topic.value,
            keep_key_order: self.keep_key_order.value,
            event_time: self.event_time.value,
            windows: self.windows,
            late_topic: self.late_topic.value,
            idle_close_after_ms: self.idle_close_after_ms.value,
            window_updates: self.window_updates.value.unwrap_or(false),
            tables: self.tables,
        })
    }
}

fn positive(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<LitInt> {
    let lit: LitInt = meta.value()?.parse()?;
    if !lit.base10_parse::<usize>().is_ok_and(|n| n > 0) {
        errors.at(lit.span(), "must be a whole number greater than 0");
    }
    Ok(lit)
}

/// Kafka's rules for topic names (the runtime checks them again for configured topics).
fn check_topic(errors: &mut Errors, lit: &LitStr) {
    let t = lit.value();
    let problem = if t.is_empty() || t.len() > 249 {
        Some("a topic name has 1 to 249 characters".to_owned())
    } else if t == "." || t == ".." {
        Some("a topic cannot be named \".\" or \"..\"".to_owned())
    } else {
        t.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| {
                format!(
                    "{c:?} is not allowed in a topic name; use letters, digits, '.', '_' and '-'"
                )
            })
    };
    if let Some(p) = problem {
        errors.at(lit.span(), format!("invalid topic {t:?}: {p}"));
    }
}

/// Skips the value of an attribute entry whose error was already recorded.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>().map(drop)
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<proc_macro2::TokenStream>().map(drop)
    } else {
        Ok(())
    }
}
