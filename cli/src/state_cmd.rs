//! `weir state get | scan | export`: reading a group's partition stores, read-only.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;
use weir::state::StoreReader;

use crate::error::{Error, Result};
use crate::locate::GroupDir;

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Print the value of KEY in STORE as JSON. Without --partition every partition store of
    /// the topic is searched, and each hit printed as {"partition": P, "value": V}.
    Get(GetArgs),
    /// Print entries of STORE whose keys start with a prefix, as JSON lines
    /// {"partition", "key", "value"}, in partition and key order.
    Scan(ScanArgs),
    /// Print every entry of the topic's stores (or of one store) as JSON lines
    /// {"partition", "store", "key", "value"}; a progress bar on stderr when it is a terminal.
    Export(ExportArgs),
}

/// Where the stores are.
#[derive(Debug, Args)]
pub(crate) struct Location {
    /// The workers' state dir (WEIR_STATE_DIR).
    #[arg(long)]
    state_dir: PathBuf,
    /// The consumer group (WEIR_GROUP; a pipeline stage's is `<group>-<stage>`).
    #[arg(long)]
    group: String,
    /// The input topic whose partition stores to read.
    #[arg(long)]
    topic: String,
    /// Only this partition's store.
    #[arg(long)]
    partition: Option<i32>,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    at: Location,
    /// The store (as declared with the handler, e.g. `totals`).
    #[arg(long)]
    store: String,
    /// KEY is JSON (e.g. `["alice",3]` or `42`), not text.
    #[arg(long)]
    json_key: bool,
    /// The key: text (a string key), or JSON with --json-key.
    key: String,
}

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    #[command(flatten)]
    at: Location,
    /// The store.
    #[arg(long)]
    store: String,
    /// Keys starting with this text (string keys).
    #[arg(long, default_value = "", conflicts_with = "json_prefix")]
    prefix: String,
    /// Keys whose JSON starts with this (any keys, e.g. `["alice",`).
    #[arg(long)]
    json_prefix: Option<String>,
    /// At most this many entries, over all partitions.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    at: Location,
    /// Only this store (default: every store, the reserved `__weir_*` ones too).
    #[arg(long)]
    store: Option<String>,
}

/// Entries read per query while exporting.
const PAGE: usize = 10_000;

pub(crate) fn run(cmd: &StateCommand) -> Result<()> {
    match cmd {
        StateCommand::Get(args) => get(args),
        StateCommand::Scan(args) => scan(args),
        StateCommand::Export(args) => export(args),
    }
}

/// The partition stores of `at`, opened.
fn readers(at: &Location) -> Result<Vec<(i32, StoreReader)>> {
    let group = GroupDir::open(&at.state_dir, &at.group)?;
    group
        .partitions(&at.topic, at.partition)?
        .into_iter()
        .map(|(p, path)| Ok((p, StoreReader::open(&path)?)))
        .collect()
}

/// Fails naming the stores there when none of `readers` has `store`.
fn check_store(readers: &[(i32, StoreReader)], at: &Location, store: &str) -> Result<()> {
    let mut all = std::collections::BTreeSet::new();
    for (_, r) in readers {
        all.extend(r.stores()?);
    }
    if all.contains(store) {
        return Ok(());
    }
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    Err(Error::Input(format!(
        "no store {store:?} in {}'s partition stores of group {:?} (stores there: {})",
        at.topic,
        at.group,
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )))
}

fn get(args: &GetArgs) -> Result<()> {
    let key: Value = if args.json_key {
        serde_json::from_str(&args.key)
            .map_err(|e| Error::Input(format!("--json-key: {:?} is not JSON: {e}", args.key)))?
    } else {
        Value::String(args.key.clone())
    };
    let readers = readers(&args.at)?;
    let mut out = std::io::stdout().lock();
    let mut found = false;
    for (p, reader) in &readers {
        let Some(value) = reader.get::<Value, Value>(&args.store, &key)? else {
            continue;
        };
        found = true;
        let line = if args.at.partition.is_some() {
            value
        } else {
            serde_json::json!({ "partition": p, "value": value })
        };
        writeln!(out, "{line}")?;
    }
    if found {
        return Ok(());
    }
    check_store(&readers, &args.at, &args.store)?;
    Err(Error::NotFound(format!(
        "no key {key} in store {:?} ({} partition store{} of {} searched)",
        args.store,
        readers.len(),
        if readers.len() == 1 { "" } else { "s" },
        args.at.topic
    )))
}

fn scan(args: &ScanArgs) -> Result<()> {
    let prefix = match &args.json_prefix {
        Some(p) => p.clone(),
        None => {
            // A string key's JSON without its closing quote.
            let mut json = Value::String(args.prefix.clone()).to_string();
            json.pop();
            json
        }
    };
    let readers = readers(&args.at)?;
    check_store(&readers, &args.at, &args.store)?;
    let mut out = std::io::stdout().lock();
    let mut left = args.limit;
    for (p, reader) in &readers {
        if left == 0 {
            break;
        }
        for (_, key, value) in reader.scan(Some(&args.store), &prefix, None, left)? {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "partition": p, "key": json(&key), "value": json(&value) })
            )?;
            left -= 1;
        }
    }
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    let readers = readers(&args.at)?;
    if let Some(store) = &args.store {
        check_store(&readers, &args.at, store)?;
    }
    let mut total = 0;
    for (_, r) in &readers {
        total += r.count(args.store.as_deref())?;
    }
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting {pos}/{len} entries [{bar:30}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (p, reader) in &readers {
        let mut after: Option<(String, String)> = None;
        loop {
            let page = reader.scan(
                args.store.as_deref(),
                "",
                after.as_ref().map(|(s, k)| (s.as_str(), k.as_str())),
                PAGE,
            )?;
            for (store, key, value) in &page {
                let line = serde_json::json!({
                    "partition": p, "store": store, "key": json(key), "value": json(value)
                });
                writeln!(out, "{line}")?;
            }
            bar.inc(page.len() as u64);
            match page.last() {
                Some((store, key, _)) if page.len() == PAGE => {
                    after = Some((store.clone(), key.clone()));
                }
                _ => break,
            }
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

/// A stored JSON text as a value (stored text that is not JSON stays a string).
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}
