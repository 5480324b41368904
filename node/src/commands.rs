//! What each subcommand does: parse its arguments, run it on the node that holds the home (over
//! the typed `/api/v1`, see `api_client.rs`) or, when none runs, directly on the home
//! (`ops.rs`), and render the typed result (`render.rs`) as text or `--json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use api::dto::{
    AddRequest, CreditsView, ExportRequest, OfferList, PublishRequest, ReceiptList,
    SnapshotRequest, VerifyRequest,
};
use api::oip::{InferRequest, InferResponse};
use protocol::ModelId;
use serde_json::{Value, json};

use crate::api_client::Api;
use crate::cli::{Cli, Command, SnapshotCommand};
use crate::home::{self, Home};
use crate::ops::{self, parse_hash};
use crate::output::{emit, show};

/// Runs one command; the exit code is 1 when `verify` finds problems.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let dir = match cli.home {
        Some(d) => d,
        None => home::default_dir()?,
    };
    let json = cli.json;
    match cli.command {
        Command::Init => {
            let (home, new) = Home::init(&dir)?;
            let id = home.key.node_id();
            emit(
                json,
                json!({ "home": dir, "node_id": id.to_string(), "created": new }),
                || {
                    if new {
                        format!("initialized moxnet home {}\nnode id {id}", dir.display())
                    } else {
                        format!("{} is already a moxnet home\nnode id {id}", dir.display())
                    }
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(args) => {
            crate::daemon::run(&dir, args, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { id } => {
            let api = running_node(&dir, "fetching")?;
            let id = parse_hash(&id)?;
            show(
                json,
                &crate::api_client::fetch(&api, &id.to_string(), json)?,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            id,
            input,
            on,
            verify,
            gpu,
        } => call(&dir, &id, &input, on.as_deref(), verify, gpu, json),
        Command::Chat {
            model,
            message,
            system,
            temperature,
            seed,
            max_tokens,
            on,
            verify,
            gpu,
        } => chat(
            &dir,
            &model,
            message,
            system,
            json!({
                "temperature": temperature,
                "seed": seed,
                "max_tokens": max_tokens,
                "moxnet": { "on": on, "verify": verify, "gpu": gpu },
            }),
            json,
        ),
        Command::Vote { id, choice } => {
            let api = running_node(&dir, "votes are signed and gossiped by a running node:")?;
            let view: api::dto::VotesView = api.send(
                "POST",
                &format!("/api/v1/models/{id}/vote"),
                &api::dto::VoteRequest { choice },
            )?;
            show(json, &view)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Follow { node, undo } => {
            let api = running_node(&dir, "follows are kept by a running node:")?;
            let list: api::dto::FollowList = api.bodyless(
                if undo { "DELETE" } else { "PUT" },
                &format!("/api/v1/follows/{node}"),
            )?;
            show(json, &list)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { reason, yes } => {
            if !yes {
                bail!(
                    "revoking this node's key cannot be undone: its votes stop counting everywhere and it can vote no more; run again with --yes"
                );
            }
            let view: api::dto::RevokeView = match Api::find(&dir)? {
                Some(api) => api.send(
                    "POST",
                    "/api/v1/revoke",
                    &api::dto::RevokeRequest {
                        reason: reason.clone(),
                    },
                )?,
                None => ops::revoke(&Home::open(&dir)?, reason)?,
            };
            show(json, &view)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Votes { id } => {
            let api = running_node(&dir, "votes are kept by a running node:")?;
            show(
                json,
                &api.get::<api::dto::VotesView>(&format!("/api/v1/models/{id}/votes"))?,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Offers => {
            let api = running_node(&dir, "offers are heard by a running node:")?;
            show(json, &api.get::<OfferList>("/api/v1/offers")?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Credits {
            peer,
            receipts,
            audit,
        } => {
            let api = running_node(&dir, "the credit ledger is kept by a running node:")?;
            match peer {
                None => show(json, &api.get::<CreditsView>("/api/v1/credits")?)?,
                Some(peer) if audit => {
                    let node = crate::package::parse_node_id(&peer)?;
                    let peer_id = net::peer_id_of(&node)
                        .ok_or_else(|| anyhow::anyhow!("{peer}: no peer id"))?;
                    show(
                        json,
                        &api.get::<api::dto::RoyaltyAudit>(&format!(
                            "/api/v1/credits/{peer_id}/royalties"
                        ))?,
                    )?;
                }
                Some(peer) => {
                    let node = crate::package::parse_node_id(&peer)?;
                    let list: ReceiptList = api.get(&format!("/api/v1/credits/{node}/receipts"))?;
                    // Checked here too, with nothing but the keys in the receipts.
                    let checked = crate::accounts::check_receipts(&list)?;
                    if receipts {
                        show(json, &list)?;
                    } else {
                        show(json, &list.account)?;
                    }
                    if !json {
                        println!("{checked}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let target = match Api::find(&dir)? {
                Some(api) => Target::Node(api),
                None => Target::Home(Box::new(Home::open(&dir)?)),
            };
            store_command(&target, command, json)
        }
    }
}

/// The node on this home, or an error that says to start one for `what`.
/// `moxnet chat`: a conversation with a language model through the running node's
/// `/v1/chat/completions`, streamed.
fn chat(
    dir: &Path,
    model: &str,
    message: Option<String>,
    system: Option<String>,
    sampling: Value,
    json: bool,
) -> Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let api = running_node(dir, "chat")?;
    let tty = std::io::stdin().is_terminal();
    let mut history: Vec<Value> = system
        .into_iter()
        .map(|s| json!({ "role": "system", "content": s }))
        .collect();
    let once = message.is_some();
    let mut message = message;
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let text = match message.take() {
            Some(m) => m,
            None if once => break,
            None => {
                if tty {
                    eprint!("> ");
                    std::io::stderr().flush().ok();
                }
                match lines.next() {
                    Some(line) => line.context("reading a message")?,
                    None => break,
                }
            }
        };
        if text.trim().is_empty() {
            break;
        }
        history.push(json!({ "role": "user", "content": text }));
        let mut body = json!({
            "model": model,
            "messages": history,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        for (k, v) in sampling.as_object().into_iter().flatten() {
            if !v.is_null() {
                body[k] = v.clone();
            }
        }
        let mut answer = String::new();
        let mut end = Value::Null;
        let mut out = std::io::stdout().lock();
        api.stream("/v1/chat/completions", &body, &mut |data| {
            let v: Value = serde_json::from_str(data).context("a chunk of the answer")?;
            if let Some(e) = v.get("error") {
                bail!("{}", e["error"].as_str().unwrap_or("the generation failed"));
            }
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                answer.push_str(t);
                if !json {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                }
            }
            if v.get("moxnet").is_some() {
                end = v;
            }
            Ok(true)
        })?;
        if json {
            writeln!(
                out,
                "{}",
                json!({
                    "text": answer,
                    "finish_reason": end["choices"][0]["finish_reason"],
                    "usage": end["usage"],
                    "moxnet": end["moxnet"],
                })
            )?;
        } else {
            writeln!(out)?;
            if tty {
                let m = &end["moxnet"];
                let paid = match m["cost"].as_u64() {
                    Some(cost) => format!(", {cost} credits"),
                    None => String::new(),
                };
                let verified = match m["verified_by"].as_array() {
                    Some(by) => format!(", verified by {} providers", by.len()),
                    None => String::new(),
                };
                eprintln!(
                    "[{} tokens in {:.0} ms, seed {}, {} on {}{paid}{verified}]",
                    end["usage"]["completion_tokens"],
                    m["generate_ms"].as_f64().unwrap_or(0.0),
                    m["seed"],
                    m["engine"].as_str().unwrap_or("?"),
                    m["ran_on"].as_str().map_or("?", |n| &n[..n.len().min(12)]),
                );
            }
        }
        history.push(json!({ "role": "assistant", "content": answer }));
    }
    Ok(ExitCode::SUCCESS)
}

fn running_node(dir: &Path, what: &str) -> Result<Api> {
    Api::find(dir)?.with_context(|| {
        format!("{what} needs a running node on this home: start `moxnet node` first")
    })
}

/// Where a store command runs: on the node that holds the home's store, or on the home itself.
enum Target {
    /// A node runs on the home: ask it.
    Node(Api),
    /// No node runs: open the store here.
    Home(Box<Home>),
}

impl Target {
    /// Runs `remote` against the node or `local` against the home.
    fn run<T>(
        &self,
        remote: impl FnOnce(&Api) -> Result<T>,
        local: impl FnOnce(&Home) -> Result<T>,
    ) -> Result<T> {
        match self {
            Target::Node(api) => remote(api),
            Target::Home(home) => local(home),
        }
    }
}

/// An absolute path (the node's working directory is not the CLI's).
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the working directory")?
        .join(path))
}

/// Runs a command that reads or writes the store.
fn store_command(target: &Target, command: Command, json: bool) -> Result<ExitCode> {
    let quiet = json;
    match command {
        Command::Search {
            query,
            sort,
            tags,
            limit,
            offset,
        } => {
            let query = api::dto::SearchQuery {
                q: query.join(" "),
                sort,
                tags: (!tags.is_empty()).then(|| tags.join(",")),
                limit: Some(limit),
                offset: Some(offset),
            };
            let results: api::dto::SearchResults = target.run(
                |a| {
                    a.get(&format!(
                        "/api/v1/search?{}",
                        crate::search::query_string(&query)
                    ))
                },
                |h| {
                    let seen = h.store.open_tree("seen").context("opening the seen tree")?;
                    let search = crate::search::Search::open(h.catalog.clone(), seen, None, None)?;
                    search
                        .search(&query)
                        .map_err(|e| anyhow::anyhow!("{}", e.message))
                },
            )?;
            show(json, &results)?
        }
        Command::Models => show(
            json,
            &target.run(|a| a.get("/api/v1/models"), |h| Ok(ops::models(&h.catalog)))?,
        )?,
        Command::Ls => show(
            json,
            &target.run(|a| a.get("/api/v1/blobs"), |h| ops::blobs(&h.store))?,
        )?,
        Command::Add { path } => {
            let path = absolute(&path)?;
            let added = target.run(
                |a| a.send("POST", "/api/v1/blobs", &AddRequest { path: path.clone() }),
                |h| ops::add(h, &path, quiet),
            )?;
            show(json, &added)?
        }
        Command::Get { hash, output } => {
            let hash = parse_hash(&hash)?;
            let output = absolute(&output)?;
            let request = ExportRequest {
                hash: hash.to_string(),
                output: output.clone(),
            };
            let exported = target.run(
                |a| a.send("POST", "/api/v1/export", &request),
                |h| ops::export(h, hash, &output),
            )?;
            show(json, &exported)?
        }
        Command::Publish { path } => {
            let path = absolute(&path)?;
            let published = target.run(
                |a| {
                    a.send(
                        "POST",
                        "/api/v1/publish",
                        &PublishRequest { path: path.clone() },
                    )
                },
                |h| ops::publish(h, &path, quiet),
            )?;
            show(json, &published)?
        }
        Command::Show { id } => {
            let id = ModelId(parse_hash(&id)?);
            let view = target.run(
                |a| a.get(&format!("/api/v1/models/{id}")),
                |h| ops::show(h, id),
            )?;
            show(json, &view)?
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Add {
                    package,
                    step,
                    metrics,
                    weights,
                },
        } => {
            let package = absolute(&package)?;
            let mut files = Vec::with_capacity(weights.len());
            for w in &weights {
                let w = absolute(w)?;
                let rel = w
                    .strip_prefix(&package)
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_string)
                    .or_else(|| w.file_name().and_then(|n| n.to_str()).map(str::to_string))
                    .with_context(|| format!("{} has no UTF-8 file name", w.display()))?;
                files.push((rel, w));
            }
            let request = SnapshotRequest {
                model: ops::run_name(&package)?,
                step,
                metrics: ops::parse_metrics(&metrics)?,
                weights: files,
            };
            let added = target.run(
                |a| a.send("POST", "/api/v1/snapshots", &request),
                |h| ops::snapshot(h, &request, quiet),
            )?;
            show(json, &added)?
        }
        Command::History { target: what } => {
            let history = if Path::new(&what).is_dir() {
                let name = ops::run_name(Path::new(&what))?;
                target.run(
                    |a| {
                        a.get(&format!(
                            "/api/v1/runs/{}/history",
                            api::ui::pages::encode(&name)
                        ))
                    },
                    |h| ops::run_history(h, &name),
                )?
            } else {
                let id = ModelId(parse_hash(&what)?);
                target.run(
                    |a| a.get(&format!("/api/v1/models/{id}/history")),
                    |h| ops::model_history(&h.catalog, id),
                )?
            };
            show(json, &history)?
        }
        Command::Pin { hash } => {
            let hash = parse_hash(&hash)?;
            let change = target.run(
                |a| a.bodyless("PUT", &format!("/api/v1/pins/{hash}")),
                |h| ops::set_pin(&h.store, hash, true),
            )?;
            show(json, &change)?
        }
        Command::Unpin { hash } => {
            let hash = parse_hash(&hash)?;
            let change = target.run(
                |a| a.bodyless("DELETE", &format!("/api/v1/pins/{hash}")),
                |h| ops::set_pin(&h.store, hash, false),
            )?;
            show(json, &change)?
        }
        Command::Gc => show(
            json,
            &target.run(|a| a.bodyless("POST", "/api/v1/gc"), ops::gc)?,
        )?,
        Command::Reindex => show(
            json,
            &target.run(|a| a.bodyless("POST", "/api/v1/reindex"), ops::reindex)?,
        )?,
        Command::Verify { hash } => {
            let only = hash.as_deref().map(parse_hash).transpose()?;
            let request = VerifyRequest {
                hash: only.map(|h| h.to_string()),
            };
            let report = target.run(
                |a| a.send("POST", "/api/v1/verify", &request),
                |h| ops::verify(&h.store, only),
            )?;
            show(json, &report)?;
            if !report.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Init
        | Command::Node(_)
        | Command::Fetch { .. }
        | Command::Call { .. }
        | Command::Offers
        | Command::Chat { .. }
        | Command::Vote { .. }
        | Command::Follow { .. }
        | Command::Votes { .. }
        | Command::Revoke { .. }
        | Command::Credits { .. } => bail!("this command does not run on the store"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `--input`: JSON text, or `@FILE` (`@-`: stdin).
fn read_input(input: &str) -> Result<InferRequest> {
    let text = match input.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the input from stdin")?;
            s
        }
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        None => input.to_string(),
    };
    let value: Value = serde_json::from_str(&text).context("the input is not valid JSON")?;
    InferRequest::from_user_json(value).map_err(|e| anyhow::anyhow!("the input: {e}"))
}

/// `moxnet call`: on the running node when there is one (fetching the model first if it is
/// not here and no peer offers compute), else in this process.
fn call(
    dir: &Path,
    id: &str,
    input: &str,
    on: Option<&str>,
    verify: bool,
    gpu: bool,
    json: bool,
) -> Result<ExitCode> {
    let id = ModelId(parse_hash(id)?);
    let request = read_input(input)?;
    let forced = on.is_some() || verify || gpu;
    let mut query = Vec::new();
    if let Some(peer) = on {
        query.push(format!("on={peer}"));
    }
    if verify {
        query.push("verify=true".to_string());
    }
    if gpu {
        query.push("gpu=true".to_string());
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let api = Api::find(dir)?;
    if forced && api.is_none() {
        bail!("--on, --verify and --gpu run the call on peers: start `moxnet node` first");
    }
    let answer = match api {
        Some(api) => {
            let (status, meta) = if forced {
                (200, Value::Null)
            } else {
                api.request("GET", &format!("/v2/models/{id}"), None)?
            };
            if status == 404 {
                // Not here: a provider runs it if the node knows one, else fetch it first.
                let offers: OfferList = api.get("/api/v1/offers")?;
                if offers.offers.is_empty() {
                    crate::api_client::fetch(&api, &id.to_string(), json)?;
                }
            } else if status != 200 {
                bail!(
                    "{}",
                    meta["error"]
                        .as_str()
                        .unwrap_or("the node refused the call")
                );
            }
            let body = serde_json::to_vec(&request.to_json())?;
            let (status, answer) = api.request(
                "POST",
                &format!("/v2/models/{id}/infer{query}"),
                Some(&body),
            )?;
            if status != 200 {
                let details = match answer.get("details") {
                    Some(d) => format!("\n{}", serde_json::to_string_pretty(d)?),
                    None => String::new(),
                };
                bail!(
                    "the call failed (HTTP {status}): {}{details}",
                    answer["error"].as_str().unwrap_or("no reason given")
                );
            }
            serde_json::from_value::<InferResponse>(answer)
                .context("the node's answer is not an OIP response")?
        }
        None => {
            let home = Home::open(dir)?;
            let config = crate::config::load(dir, &crate::cli::NodeArgs::default())?;
            let (sandbox_config, limits) = config.inference.sandbox();
            let engine = crate::inference::Inference::new(
                dir,
                sandbox::SandboxConfig {
                    // One call in this process: it runs on the instance loading initialised.
                    warm_instances: 1,
                    snapshot_after: None,
                    ..sandbox_config
                },
                limits,
                crate::engines::start(&config.inference, !crate::remote::gpus().is_empty())?,
            )?;
            let model = engine.load(&home.store, &home.catalog, id).map_err(|e| {
                if e.status == 404 {
                    anyhow::anyhow!(
                        "model {id} is not on this node; start `moxnet node` and call again to fetch it"
                    )
                } else {
                    anyhow::anyhow!("{e}")
                }
            })?;
            engine
                .infer(&model, &request)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    show(json, &answer)?;
    Ok(ExitCode::SUCCESS)
}
