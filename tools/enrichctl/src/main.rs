//! `enrichctl`: admin CLI for the enrichment backend, against the local stack or a deployed one.
//!
//! - With neither `--stack-name` nor `--table`: the local stack started by `make run`, found
//!   through `<state>/stack.json` (state folder `.local`, or `--state-dir` / `LOCAL_STATE_DIR`);
//!   it says the stack is not running when nothing answers at the gateway that file names.
//! - `--stack-name NAME`: a deployed stack; CloudFormation `DescribeStacks` gives its table (the
//!   `TableName` output, or for a stack deployed without that output the physical id of its
//!   `EnrichmentTable` resource).
//! - `--table NAME`: a deployed table, by name.
//!
//! Against a deployed stack, the AWS SDK's default configuration applies: the standard
//! credential chain (environment, profiles with `credential_process` or SSO, web identity,
//! container and instance roles), the region of `AWS_REGION` or the profile, and endpoint
//! overrides (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_CLOUDFORMATION`).
//! `token` is local only: a deployed stack's tokens come from its identity provider.
//!
//! Commands: `token`, `credits grant` (idempotent with `--idempotency-key`), `credits balance`,
//! `credits history` (the API's JSON), `people import`, `people show`, `suppress` and `erase`
//! (GDPR; the report as JSON). A bad argument exits 2
//! with clap's usage error; a failure of the command exits 1 with `enrichctl: <why>`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};
use chrono::Utc;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use enrichment::credits::{History, HistoryQuery, parse_history};
use enrichment::domain::{Person, timestamp};
use enrichment::error::ApiError;
use enrichment::identity::{bare_domain, email_key, is_bare_domain, linkedin_key, name_domain_key};
use enrichment::people::{PersonInput, PersonView, creation_time};
use enrichment::store::{CreditSource, Grant, GrantOutcome, Store};
use local_stack::{StackInfo, devkey, dynamodb_config, gateway_answers};
use uuid::Uuid;

/// The most credits one `credits grant` adds.
const MAX_GRANT: i64 = 1_000_000_000;
/// The most characters a grant's description holds.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// The most characters of a grant's idempotency key.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;
/// The most characters a CSV cell may hold.
const MAX_CELL_CHARS: usize = 1024;
/// The most bytes the cells of one CSV row may hold together.
const MAX_ROW_BYTES: usize = 16 * 1024;

/// The stack output that names the table (`template.yaml`, `Outputs`).
const TABLE_OUTPUT: &str = "TableName";
/// The table's logical id in `template.yaml`: its physical id is the table name.
const TABLE_RESOURCE: &str = "EnrichmentTable";

#[derive(Parser)]
#[command(
    name = "enrichctl",
    about = "Admin CLI for the enrichment backend: the local stack, or a deployed one with \
             --stack-name or --table",
    after_help = "Against a deployed stack (--stack-name or --table), the AWS SDK's default \
                  configuration applies: the standard credential chain (environment, profiles, \
                  SSO, roles), AWS_REGION or the profile's region, and AWS_ENDPOINT_URL, \
                  AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_CLOUDFORMATION."
)]
struct Cli {
    /// The local stack's state folder (without --stack-name or --table).
    #[arg(
        long,
        env = "LOCAL_STATE_DIR",
        default_value = ".local",
        global = true,
        help_heading = "Target"
    )]
    state_dir: PathBuf,
    /// A deployed stack's CloudFormation stack name (or id): its `TableName` output names the
    /// table (or, without that output, its `EnrichmentTable` resource).
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "table",
          value_parser = stack_name, help_heading = "Target")]
    stack_name: Option<String>,
    /// A deployed DynamoDB table, by name: 3 to 255 of A-Z a-z 0-9 _ - . (no CloudFormation
    /// call).
    #[arg(long, global = true, value_name = "NAME", value_parser = table_name,
          help_heading = "Target")]
    table: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a session token the local stack accepts (RS256, signed with its dev key). Its
    /// issuer is the gateway's URL: a stack restarted on another PORT refuses it. Local stack
    /// only: refused with --stack-name or --table.
    Token {
        /// User id (`sub`, the enrichment's `createdBy`): 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        user: String,
        /// Organization id (`o.id`): 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        /// Lifetime in seconds, 1 to 31536000 (a year).
        #[arg(long, default_value_t = 3600,
              value_parser = clap::value_parser!(u64).range(1..=devkey::MAX_TOKEN_LIFETIME.as_secs()))]
        expires_in: u64,
    },
    /// Grant or read an organization's credits.
    Credits {
        #[command(subcommand)]
        command: Credits,
    },
    /// Import or show people.
    People {
        #[command(subcommand)]
        command: People,
    },
    /// Suppress a person (GDPR objection): the worker enriches nobody with this email,
    /// LinkedIn profile or name at this domain any more (it finishes `dataFound: false`,
    /// refunded, before any provider call), and the global cache entries that may hold the
    /// person's data are deleted now. Prints what was done and the DynamoDB calls it took, as
    /// JSON. Idempotent.
    Suppress {
        #[command(flatten)]
        subject: Subject,
    },
    /// Suppress and erase a person (GDPR erasure): as `suppress`, and the values found for the
    /// person are removed from every organization's person records. Idempotent.
    Erase {
        #[command(flatten)]
        subject: Subject,
    },
}

/// Whom a suppression names: exactly one of an email, a LinkedIn profile, or a full name with
/// its company domain.
#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("subject")
        .required(true)
        .args(["email", "linkedin", "name"])
))]
struct Subject {
    /// An email address (`ada@example.com`).
    #[arg(long, value_parser = email_subject)]
    email: Option<String>,
    /// A LinkedIn profile URL (`https://www.linkedin.com/in/ada-l`).
    #[arg(long, value_parser = linkedin_subject)]
    linkedin: Option<String>,
    /// A full name (`"Ada Lovelace"`), with --domain.
    #[arg(long, requires = "domain", value_parser = full_name)]
    name: Option<String>,
    /// The company domain of --name (`example.com`).
    #[arg(long, requires = "name", value_parser = company_domain)]
    domain: Option<String>,
}

impl Subject {
    /// The suppression key ([`enrichment::identity`]).
    fn key(&self) -> Result<String, String> {
        match (&self.email, &self.linkedin, &self.name, &self.domain) {
            (Some(key), _, _, _) | (_, Some(key), _, _) => Ok(key.clone()),
            (_, _, Some(name), Some(domain)) => name_domain_key(name, domain)
                .ok_or_else(|| format!("{domain:?} is not a company domain")),
            // clap's group and `requires` leave no other case.
            _ => Err("give --email, --linkedin, or --name with --domain".into()),
        }
    }
}

/// An email address as its suppression key (`em:...`).
fn email_subject(value: &str) -> Result<String, String> {
    email_key(value).ok_or_else(|| "must be an email address".into())
}

/// A LinkedIn profile URL as its suppression key (`li:...`).
fn linkedin_subject(value: &str) -> Result<String, String> {
    linkedin_key(value)
        .ok_or_else(|| "must be a LinkedIn profile URL (linkedin.com/in/<handle>)".into())
}

/// A company domain as people are created with (`northwind.example`, or a URL of it).
fn company_domain(value: &str) -> Result<String, String> {
    bare_domain(value)
        .filter(|domain| is_bare_domain(domain))
        .ok_or_else(|| "must be a company domain (northwind.example)".into())
}

/// A full name: a first and a last name at least, 1 to 256 characters.
fn full_name(value: &str) -> Result<String, String> {
    let words = value.split_whitespace().count();
    if words >= 2 && value.chars().count() <= 256 {
        Ok(value.to_string())
    } else {
        Err("must be a first and a last name (\"Ada Lovelace\"), at most 256 characters".into())
    }
}

#[derive(Subcommand)]
enum Credits {
    /// Add credits to an organization's balance, with a `credit_added` transaction in its
    /// history; prints the new balance. A grant that would take the balance above
    /// 1000000000000000 is refused. With --idempotency-key, a grant sent again with the same
    /// key for the same organization adds nothing (whatever its amount) and prints
    /// `already granted (idempotency key KEY); balance N`.
    Grant {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        /// Credits to add, 1 to 1000000000.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_GRANT))]
        amount: i64,
        /// Where the credits come from: manual, signup_bonus, stripe_purchase or
        /// stripe_subscription.
        #[arg(long, default_value = "manual", value_parser = grant_source)]
        source: CreditSource,
        /// Free text shown in the history: 1 to 500 characters.
        #[arg(long, value_parser = description)]
        description: Option<String>,
        /// Makes the grant safe to retry: 1 to 200 characters, no control characters.
        #[arg(long, value_name = "KEY", value_parser = idempotency_key)]
        idempotency_key: Option<String>,
    },
    /// Print an organization's balance.
    Balance {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
    },
    /// Print a page of an organization's credit transactions, newest first, as the API answers
    /// `GET /api/v1/operations/credits/history`: `{"transactions": [...], "count": n}`. The
    /// options are checked as the API checks its query.
    History {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        /// The first day (2026-12-01, from its first millisecond, UTC) or time
        /// (2026-12-01T10:30:00Z, 2026-12-01T11:30:00+01:00) included [default: no lower bound].
        #[arg(long, value_name = "DATE")]
        start_date: Option<String>,
        /// The last day (to its last millisecond, UTC) or time included [default: no upper
        /// bound].
        #[arg(long, value_name = "DATE")]
        end_date: Option<String>,
        /// Transactions per page, 1 to 1000 [default: 100].
        #[arg(long, value_name = "N")]
        limit: Option<String>,
        /// Transactions to skip, newest first, 0 to 100000 [default: 0].
        #[arg(long, value_name = "N")]
        offset: Option<String>,
    },
}

#[derive(Subcommand)]
enum People {
    /// Import people from a CSV file with the header
    /// `first_name,last_name,company_name,company_domain,linkedin_url`; prints one person id per
    /// data row, in order. Nothing is written unless every row is valid, and a failed write
    /// leaves nothing of the file behind.
    Import {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        file: PathBuf,
    },
    /// Print a person as the API answers it (`GET /api/v1/entities/persons/{personId}`).
    Show {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        person_id: String,
    },
}

/// An organization or user id: 1 to 128 characters of `A-Z a-z 0-9 _ -`.
fn identifier(value: &str) -> Result<String, String> {
    let valid = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(value.to_string())
    } else {
        Err("must be 1 to 128 characters among A-Z, a-z, 0-9, '_' and '-'".into())
    }
}

/// A DynamoDB table name: 3 to 255 characters of `A-Z a-z 0-9 _ - .`.
fn table_name(value: &str) -> Result<String, String> {
    let valid = (3..=255).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err("must be 3 to 255 characters among A-Z, a-z, 0-9, '_', '-' and '.'".into())
    }
}

/// A CloudFormation stack name or id: not empty, at most 2048 characters (an id is an ARN),
/// no whitespace. CloudFormation itself says whether the stack exists.
fn stack_name(value: &str) -> Result<String, String> {
    let valid = (1..=2048).contains(&value.len())
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(value.to_string())
    } else {
        Err("must be a stack name or id: 1 to 2048 characters, no spaces".into())
    }
}

/// A grant's source: any [`CreditSource`] but `refund`, which only the product writes.
fn grant_source(value: &str) -> Result<CreditSource, String> {
    value.parse()
}

/// A grant's description: 1 to [`MAX_DESCRIPTION_CHARS`] characters.
fn description(value: &str) -> Result<String, String> {
    let chars = value.chars().count();
    if (1..=MAX_DESCRIPTION_CHARS).contains(&chars) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "must be 1 to {MAX_DESCRIPTION_CHARS} characters (it has {chars})"
        ))
    }
}

/// An idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] characters, none a control character.
fn idempotency_key(value: &str) -> Result<String, String> {
    let chars = value.chars().count();
    if !(1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&chars) {
        return Err(format!(
            "must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters (it has {chars})"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(value.to_string())
}

/// The history query of the options, checked by the API's own rules ([`parse_history`]).
/// Errors: the API's message, with the option it is about.
fn history_query(
    start_date: Option<&str>,
    end_date: Option<&str>,
    limit: Option<&str>,
    offset: Option<&str>,
) -> Result<HistoryQuery, String> {
    parse_history(start_date, end_date, limit, offset).map_err(|e| match &e {
        ApiError::InvalidField { field, message, .. } => {
            let option = match field.as_str() {
                "startDate" => "--start-date",
                "endDate" => "--end-date",
                "limit" => "--limit",
                "offset" => "--offset",
                other => other,
            };
            format!("invalid value for '{option}': {message}")
        }
        other => other.to_string(),
    })
}

impl Cli {
    /// The checks clap cannot make alone: `token` is local only, and the history's options
    /// together.
    fn check(&self) -> Result<(), clap::Error> {
        // The error of a subcommand, with its usage (`enrichctl credits history ...`).
        let usage = |path: &[&str], kind: ErrorKind, message: String| {
            let mut command = Cli::command();
            command.build();
            let mut sub = &mut command;
            for name in path {
                sub = sub
                    .find_subcommand_mut(name)
                    .expect("the subcommands of Cli");
            }
            sub.error(kind, message)
        };
        match &self.command {
            Command::Token { .. } if self.deployed() => Err(usage(
                &["token"],
                ErrorKind::ArgumentConflict,
                TOKEN_LOCAL_ONLY.to_string(),
            )),
            Command::Credits {
                command:
                    Credits::History {
                        start_date,
                        end_date,
                        limit,
                        offset,
                        ..
                    },
            } => history_query(
                start_date.as_deref(),
                end_date.as_deref(),
                limit.as_deref(),
                offset.as_deref(),
            )
            .map(|_| ())
            .map_err(|message| usage(&["credits", "history"], ErrorKind::ValueValidation, message)),
            _ => Ok(()),
        }
    }
}

const TOKEN_LOCAL_ONLY: &str = "`token` mints tokens for the local stack only: a deployed \
                                stack accepts its identity provider's tokens; drop \
                                --stack-name/--table";

/// Parses the arguments (`args` starts with the program's name) and makes [`Cli::check`]'s
/// checks.
fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    cli.check()?;
    Ok(cli)
}

const COLUMNS: [&str; 5] = [
    "first_name",
    "last_name",
    "company_name",
    "company_domain",
    "linkedin_url",
];

/// The running stack of `<state_dir>/stack.json`. Errors: no such file, or a file left over by
/// a stack that stopped (nothing answers at its gateway).
async fn stack_info(state_dir: &Path) -> Result<StackInfo, String> {
    let path = state_dir.join("stack.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "the local stack is not running (no {}): start it with `make run`",
            path.display()
        )
    })?;
    let info: StackInfo = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a stack description: {e}", path.display()))?;
    if !gateway_answers(&info.gateway_url).await {
        return Err(format!(
            "the local stack is not running (nothing answers at {}; {} is left over from a stack \
             that stopped): start it with `make run`",
            info.gateway_url,
            path.display()
        ));
    }
    Ok(info)
}

fn dynamodb(info: &StackInfo) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(dynamodb_config(&info.dynamodb_url).build())
}

fn store(info: &StackInfo) -> Store {
    Store::new(dynamodb(info), &info.table_name)
}

/// The AWS SDK's default configuration (credential chain, region, endpoint overrides), with
/// bounds fit for an operator's network: 10 s to connect, 60 s for a call and its retries.
///
/// Errors: no region configured.
async fn aws_sdk_config() -> Result<aws_config::SdkConfig, String> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        return Err(
            "no AWS region: set AWS_REGION, or a region in the profile of AWS_PROFILE".into(),
        );
    }
    Ok(config)
}

/// A CloudFormation failure: the service's code and message when it answered, else the SDK's
/// whole error context (no credentials, no answer...).
fn cloudformation_error<E, R>(error: &aws_sdk_cloudformation::error::SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => DisplayErrorContext(error).to_string(),
    }
}

/// The table named by a stack's `TableName` output, if it has one.
fn table_output(stack: &aws_sdk_cloudformation::types::Stack) -> Option<String> {
    stack
        .outputs()
        .iter()
        .find(|output| output.output_key() == Some(TABLE_OUTPUT))
        .and_then(|output| output.output_value())
        .filter(|value| !value.is_empty())
        .map(str::to_string)
}

/// The table of the deployed stack `name`: its `TableName` output (`DescribeStacks`), or for a
/// stack without it the physical id of its `EnrichmentTable` resource
/// (`DescribeStackResource`).
///
/// Errors: CloudFormation's (no such stack, no access...), or a stack with neither.
async fn stack_table(
    cloudformation: &aws_sdk_cloudformation::Client,
    name: &str,
) -> Result<String, String> {
    let described = cloudformation
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot describe the stack {name:?} (CloudFormation DescribeStacks): {}",
                cloudformation_error(&e)
            )
        })?;
    let stack = described
        .stacks()
        .first()
        .ok_or_else(|| format!("no stack {name:?}"))?;
    if let Some(table) = table_output(stack) {
        return Ok(table);
    }
    let status = stack
        .stack_status()
        .map_or_else(|| "status unknown".to_string(), |s| s.as_str().to_string());
    let neither = |why: String| {
        format!(
            "the stack {name:?} ({status}) has no {TABLE_OUTPUT} output and no table \
             {TABLE_RESOURCE}: {why}"
        )
    };
    let resource = cloudformation
        .describe_stack_resource()
        .stack_name(name)
        .logical_resource_id(TABLE_RESOURCE)
        .send()
        .await
        .map_err(|e| neither(cloudformation_error(&e)))?;
    let detail = resource.stack_resource_detail();
    match detail.map(|d| (d.resource_type(), d.physical_resource_id())) {
        Some((Some("AWS::DynamoDB::Table"), Some(table))) if !table.is_empty() => {
            Ok(table.to_string())
        }
        Some((Some("AWS::DynamoDB::Table"), _)) => {
            Err(neither(format!("{TABLE_RESOURCE} has no physical id yet")))
        }
        Some((kind, _)) => Err(neither(format!(
            "{TABLE_RESOURCE} is of type {}",
            kind.unwrap_or("unknown")
        ))),
        None => Err(neither(format!("no {TABLE_RESOURCE} resource"))),
    }
}

/// Where the command works.
enum Target<'a> {
    /// The local stack of this state folder.
    Local(&'a Path),
    /// A deployed stack, by CloudFormation stack name or id.
    Stack(&'a str),
    /// A deployed table, by name.
    Table(&'a str),
}

impl Cli {
    fn target(&self) -> Target<'_> {
        match (&self.table, &self.stack_name) {
            (Some(table), _) => Target::Table(table),
            (None, Some(stack)) => Target::Stack(stack),
            (None, None) => Target::Local(&self.state_dir),
        }
    }

    /// Whether it addresses a deployed stack (`--stack-name` or `--table`).
    fn deployed(&self) -> bool {
        !matches!(self.target(), Target::Local(_))
    }
}

/// The store the command works on: the local stack's, or with `--stack-name`/`--table` the
/// deployed table's through the AWS SDK's default configuration.
async fn open_store(cli: &Cli) -> Result<Store, String> {
    let (sdk, table) = match cli.target() {
        Target::Local(state_dir) => return Ok(store(&stack_info(state_dir).await?)),
        Target::Table(table) => (aws_sdk_config().await?, table.to_string()),
        Target::Stack(name) => {
            let sdk = aws_sdk_config().await?;
            let table = stack_table(&aws_sdk_cloudformation::Client::new(&sdk), name).await?;
            (sdk, table)
        }
    };
    Ok(Store::from_sdk(&sdk, table))
}

/// The line (from 1) where the record at `position` starts in `bytes`. Counted here: the csv
/// crate's own line number is off after a blank line and in a CRLF file, and its byte offset
/// points at the line ends before the record.
fn line_of(bytes: &[u8], position: &csv::Position) -> usize {
    let offset = usize::try_from(position.byte())
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let start = bytes[offset..]
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .map_or(bytes.len(), |skipped| offset + skipped);
    1 + bytes[..start].iter().filter(|b| **b == b'\n').count()
}

/// Reads and validates the CSV with the people API's rules ([`PersonInput::validate`]: a first
/// and last name, a linkedin.com profile URL, a company domain); a cell holds at most 1024
/// characters and a row 16 KiB. The header names each
/// column once. The first bad row is reported by its line in the file.
fn read_people(file: &Path) -> Result<Vec<Person>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .clone();
    let mut seen = HashSet::new();
    if let Some(twice) = headers.iter().find(|h| !seen.insert(*h)) {
        return Err(format!(
            "{}: the header has the column {twice:?} twice",
            file.display()
        ));
    }
    let index: Vec<usize> = COLUMNS
        .iter()
        .map(|column| {
            headers
                .iter()
                .position(|h| h == *column)
                .ok_or_else(|| format!("{}: the header has no column {column:?}", file.display()))
        })
        .collect::<Result<_, _>>()?;
    let started = Utc::now();
    let mut people = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.position() {
            Some(position) => format!("{} line {}: {e}", file.display(), line_of(&bytes, position)),
            None => format!("{}: {e}", file.display()),
        })?;
        let line = record.position().map_or(0, |p| line_of(&bytes, p));
        let bad = |why: &str| format!("{} line {line}: {why}", file.display());
        for (i, cell) in record.iter().enumerate() {
            let chars = cell.chars().count();
            if chars > MAX_CELL_CHARS {
                return Err(bad(&format!(
                    "{} has {chars} characters, more than {MAX_CELL_CHARS}",
                    headers
                        .get(i)
                        .map_or_else(|| format!("cell {}", i + 1), |h| format!("{h:?}"))
                )));
            }
        }
        let bytes: usize = record.iter().map(str::len).sum();
        if bytes > MAX_ROW_BYTES {
            return Err(bad(&format!(
                "the row holds {bytes} bytes, more than {MAX_ROW_BYTES}"
            )));
        }
        let value = |i: usize| {
            record
                .get(index[i])
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        let input = PersonInput {
            first_name: value(0),
            last_name: value(1),
            company_name: value(2),
            company_domain: value(3),
            linkedin_url: value(4),
        };
        let person = input
            .validate(&creation_time(started, people.len()))
            .map_err(|e| {
                let column = match e.field {
                    "firstName" => "first_name",
                    "lastName" => "last_name",
                    "companyName" => "company_name",
                    "companyDomain" => "company_domain",
                    _ => "linkedin_url",
                };
                bad(&format!("{column}: {}", e.message))
            })?;
        people.push(person);
    }
    if people.is_empty() {
        return Err(format!("{}: no data rows", file.display()));
    }
    Ok(people)
}

/// Writes `people` into the org, all or nothing, through the API's write path
/// ([`Store::create_people`]).
async fn import_people(store: &Store, org: &str, people: &[Person]) -> Result<(), String> {
    store
        .create_people(org, people)
        .await
        .map_err(|e| format!("nothing was imported: {e}"))
}

/// Runs a command; returns what it prints.
async fn execute(cli: Cli) -> Result<String, String> {
    match &cli.command {
        Command::Token {
            user,
            org,
            expires_in,
        } => {
            if cli.deployed() {
                return Err(TOKEN_LOCAL_ONLY.into());
            }
            let info = stack_info(&cli.state_dir).await?;
            devkey::sign(
                &info.dev_key_path,
                &info.gateway_url,
                user,
                org,
                Duration::from_secs(*expires_in),
            )
        }
        Command::Credits {
            command:
                Credits::Grant {
                    org,
                    amount,
                    source,
                    description,
                    idempotency_key,
                },
        } => {
            let grant = Grant {
                amount: *amount,
                source: *source,
                description: description.clone(),
                metadata: None,
                idempotency_key: idempotency_key.clone(),
            };
            let outcome = open_store(&cli)
                .await?
                .grant(org, &grant)
                .await
                .map_err(|e| e.to_string())?;
            Ok(match outcome {
                GrantOutcome::Granted { balance, .. } => balance.to_string(),
                GrantOutcome::AlreadyGranted { balance } => format!(
                    "already granted (idempotency key {}); balance {balance}",
                    idempotency_key.as_deref().unwrap_or_default()
                ),
            })
        }
        Command::Credits {
            command: Credits::Balance { org },
        } => Ok(open_store(&cli)
            .await?
            .credit_balance(org)
            .await
            .map_err(|e| e.to_string())?
            .to_string()),
        Command::Credits {
            command:
                Credits::History {
                    org,
                    start_date,
                    end_date,
                    limit,
                    offset,
                },
        } => {
            let query = history_query(
                start_date.as_deref(),
                end_date.as_deref(),
                limit.as_deref(),
                offset.as_deref(),
            )?;
            let page = open_store(&cli)
                .await?
                .credit_history(org, &query.from, &query.to, query.offset, query.limit)
                .await
                .map_err(|e| e.to_string())?;
            let history = History {
                count: page.transactions.len(),
                transactions: page.transactions,
            };
            serde_json::to_string_pretty(&history).map_err(|e| e.to_string())
        }
        Command::People {
            command: People::Import { org, file },
        } => {
            let people = read_people(file)?;
            import_people(&open_store(&cli).await?, org, &people).await?;
            Ok(people
                .iter()
                .map(|person| person.id.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Command::Suppress { subject } | Command::Erase { subject } => {
            let erase = matches!(&cli.command, Command::Erase { .. });
            let report = open_store(&cli)
                .await?
                .suppress(&subject.key()?, erase, &timestamp(Utc::now()))
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())
        }
        Command::People {
            command: People::Show { org, person_id },
        } => {
            let id = Uuid::parse_str(person_id)
                .map_err(|_| format!("{person_id:?} is not a person id (UUID)"))?;
            let person = open_store(&cli)
                .await?
                .get_person(org, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no person {id} in org {org}"))?;
            serde_json::to_string_pretty(&PersonView::from(person)).map_err(|e| e.to_string())
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match execute(cli).await {
        Ok(output) => {
            // A reader that stops early (`| head -1`) closes the pipe: that is not an error.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{output}");
        }
        Err(e) => {
            eprintln!("enrichctl: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use enrichment::identity;

    use super::*;
    use local_stack::{Options, Stack};

    fn csv_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("people-{}.csv", Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    const HEADER: &str = "first_name,last_name,company_name,company_domain,linkedin_url\n";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_args(std::iter::once("enrichctl").chain(args.iter().copied()))
    }

    #[test]
    fn a_suppression_names_one_subject_normalized_as_the_cache_keys_are() {
        let key = |args: &[&str]| {
            let cli = parse_args([&["enrichctl", "suppress"], args].concat()).unwrap();
            let Command::Suppress { subject } = cli.command else {
                panic!("not a suppression")
            };
            subject.key().unwrap()
        };
        assert_eq!(
            key(&["--email", " Ada.Quill@Northwind.Example "]),
            "em:ada.quill@northwind.example"
        );
        assert_eq!(
            key(&[
                "--linkedin",
                "HTTPS://www.LinkedIn.com/in/Ada-Quill-NW/?trk=x"
            ]),
            "li:linkedin.com/in/ada-quill-nw"
        );
        assert_eq!(
            key(&[
                "--name",
                " ada  QUILL",
                "--domain",
                "https://www.northwind.example/"
            ]),
            "nd:ada quill@northwind.example"
        );
        for bad in [
            &[][..],
            &["--email", "not an address"],
            &[
                "--email",
                "a@b.test",
                "--linkedin",
                "https://linkedin.com/in/a",
            ],
            &[
                "--email",
                "a@b.test",
                "--name",
                "Ada Quill",
                "--domain",
                "b.test",
            ],
            &["--name", "Ada Quill"],
            &["--name", "Ada", "--domain", "b.test"],
            &["--name", "Ada Quill", "--domain", "not a domain"],
            &["--domain", "b.test"],
            &["--linkedin", "https://www.linkedin.com/company/acme"],
        ] {
            let error = parse_args([&["enrichctl", "suppress"], bad].concat())
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was taken"));
            assert_eq!(error.exit_code(), 2, "{bad:?}: {error}");
        }
    }

    #[test]
    fn import_reads_rows_in_order_with_empty_cells_as_none() {
        let file = csv_file(
            "first_name,last_name,company_name,company_domain,linkedin_url\n\
             Ada,Lovelace,Analytical,analytical.test,\n\
             Grace,Hopper,,,https://www.linkedin.com/in/grace-h\n",
        );
        let people = read_people(&file).unwrap();
        assert_eq!(people.len(), 2);
        assert_eq!(people[0].first_name.as_deref(), Some("Ada"));
        assert_eq!(people[0].linkedin_url, None);
        assert_eq!(
            people[1].linkedin_url.as_deref(),
            Some("https://www.linkedin.com/in/grace-h")
        );
    }

    #[test]
    fn a_bad_row_is_named_by_its_line() {
        let file = csv_file(
            "first_name,last_name,company_name,company_domain,linkedin_url\n\
             Ada,Lovelace,Analytical,analytical.test,\n\
             Bob,,,,\n",
        );
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 3"), "{error}");
        let error = read_people(Path::new("/nonexistent/people.csv")).unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
    }

    #[test]
    fn a_bad_row_is_named_by_its_line_in_the_file_after_multiline_cells_and_blank_lines() {
        let file = csv_file(&format!(
            "{HEADER}Ada,Lovelace,\"Analytical\nEngines\",analytical.test,\n\nBob,,,,\n"
        ));
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 5:"), "{error}");
        let file = csv_file(&format!(
            "{HEADER}Ada,Lovelace,\"Analytical\nEngines\",analytical.test,\nBob,Marley,x\n"
        ));
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 4:"), "{error}");
        let file = csv_file(
            "first_name,last_name,company_name,company_domain,linkedin_url\r\n\
             Ada,Lovelace,,,\r\n\r\n\r\nBob,,,,\r\n",
        );
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 5:"), "{error}");
    }

    #[test]
    fn a_missing_column_is_reported() {
        let file = csv_file("first_name,last_name\nAda,Lovelace\n");
        assert!(read_people(&file).unwrap_err().contains("company_name"));
    }

    #[test]
    fn a_duplicated_header_column_is_rejected() {
        let file = csv_file(
            "first_name,last_name,company_name,company_domain,linkedin_url,last_name\n\
             Ada,Lovelace,Analytical,analytical.test,,Byron\n",
        );
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("\"last_name\" twice"), "{error}");
    }

    #[test]
    fn cells_and_rows_are_bounded() {
        let long = "x".repeat(MAX_CELL_CHARS + 1);
        let file = csv_file(&format!(
            "{HEADER}Ada,Lovelace,,,\nAda,{long},Analytical,analytical.test,\n"
        ));
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 3:"), "{error}");
        assert!(
            error.contains("\"last_name\" has 1025 characters"),
            "{error}"
        );
        // 1000 characters of 4 bytes each is a company name within bounds (the API's limit).
        let name = "😀".repeat(enrichment::people::MAX_TEXT_CHARS);
        let file = csv_file(&format!("{HEADER}Ada,Lovelace,{name},,\n"));
        assert_eq!(read_people(&file).unwrap()[0].company_name, Some(name));
        let wide = "😀".repeat(MAX_CELL_CHARS);
        // Five of them are not a row within bounds.
        let file = csv_file(&format!("{HEADER}{wide},{wide},{wide},{wide},{wide}\n"));
        let error = read_people(&file).unwrap_err();
        assert!(error.contains("line 2: the row holds"), "{error}");
        // Extra columns count too.
        let file = csv_file(&format!(
            "first_name,last_name,company_name,company_domain,linkedin_url,notes\n\
             Ada,Lovelace,,,,{long}\n"
        ));
        assert!(
            read_people(&file)
                .unwrap_err()
                .contains("\"notes\" has 1025")
        );
    }

    #[test]
    fn linkedin_urls_must_be_linkedin_profiles() {
        for good in [
            "https://www.linkedin.com/in/ada-l",
            "https://linkedin.com/in/ada-l/",
            "http://uk.linkedin.com/in/ada-l?trk=x",
            "https://WWW.LinkedIn.com/in/ada-l",
        ] {
            assert!(identity::is_linkedin_profile_url(good), "{good}");
            let file = csv_file(&format!("{HEADER}Ada,Lovelace,,,{good}\n"));
            assert!(read_people(&file).is_ok(), "{good}");
        }
        for bad in [
            "https://evil.example/linkedin.com/in/ada",
            "https://linkedin.com.evil.example/in/ada",
            "https://notlinkedin.com/in/ada",
            "https://www.linkedin.com/company/acme",
            "https://www.linkedin.com/in/",
            "https://www.linkedin.com/inbox/ada",
            "www.linkedin.com/in/ada",
            "ftp://www.linkedin.com/in/ada",
            "https://linkedin.com@evil.example/in/ada",
            "https://www.linkedin.com:8443@evil.example/in/ada",
        ] {
            assert!(!identity::is_linkedin_profile_url(bad), "{bad}");
            let file = csv_file(&format!("{HEADER}Ada,Lovelace,,,\nAda,Lovelace,,,{bad}\n"));
            let error = read_people(&file).unwrap_err();
            assert!(error.contains("line 3: linkedin_url"), "{bad}: {error}");
        }
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        let token = |expires_in: &str| {
            parse(&[
                "token",
                "--user",
                "u",
                "--org",
                "o",
                "--expires-in",
                expires_in,
            ])
        };
        for bad in [
            "0",
            "31536001",
            "9223372036854775807",
            "18446744073709551615",
            "-1",
        ] {
            assert!(token(bad).is_err(), "{bad}");
        }
        for good in ["1", "3600", "31536000"] {
            assert!(token(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn credit_grants_are_bounded() {
        let grant = |amount: &str| parse(&["credits", "grant", "--org", "o", "--amount", amount]);
        for bad in ["0", "-5", "1000000001", "9223372036854775807"] {
            assert!(grant(bad).is_err(), "{bad}");
        }
        assert!(grant("1").is_ok());
        assert!(grant("1000000000").is_ok());
    }

    #[test]
    fn grant_options_are_bounded() {
        let grant = |extra: &[&str]| {
            let mut args = vec!["credits", "grant", "--org", "o", "--amount", "5"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        let cli = grant(&[]).unwrap();
        let Command::Credits {
            command:
                Credits::Grant {
                    source,
                    description,
                    idempotency_key,
                    ..
                },
        } = cli.command
        else {
            panic!("not a grant");
        };
        assert_eq!(source, CreditSource::Manual);
        assert_eq!((description, idempotency_key), (None, None));
        for good in [
            "manual",
            "signup_bonus",
            "stripe_purchase",
            "stripe_subscription",
        ] {
            assert!(grant(&["--source", good]).is_ok(), "{good}");
        }
        for bad in ["refund", "Manual", "", "bonus"] {
            assert!(grant(&["--source", bad]).is_err(), "{bad}");
        }
        let longest = "é".repeat(MAX_DESCRIPTION_CHARS);
        let over = "é".repeat(MAX_DESCRIPTION_CHARS + 1);
        assert!(grant(&["--description", &longest]).is_ok());
        assert!(grant(&["--description", &over]).is_err());
        assert!(grant(&["--description", ""]).is_err());
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS);
        let over = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1);
        assert!(grant(&["--idempotency-key", &longest]).is_ok());
        assert!(grant(&["--idempotency-key", "stripe:evt_1 ü"]).is_ok());
        for bad in ["", over.as_str(), "a\nb", "tab\there"] {
            assert!(grant(&["--idempotency-key", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_options_are_checked_as_the_api_checks_its_query() {
        let history = |extra: &[&str]| {
            let mut args = vec!["credits", "history", "--org", "o"];
            args.extend_from_slice(extra);
            parse(&args).map(|_| ()).map_err(|e| {
                assert_eq!(e.kind(), ErrorKind::ValueValidation);
                e.to_string()
            })
        };
        assert!(history(&[]).is_ok());
        assert!(
            history(&[
                "--start-date",
                "2026-12-01",
                "--end-date",
                "2026-12-01T23:00:00+01:00",
                "--limit",
                "1000",
                "--offset",
                "100000",
            ])
            .is_ok()
        );
        for (args, expected) in [
            (
                vec!["--start-date", "yesterday"],
                "invalid value for '--start-date': startDate must be an ISO 8601 date",
            ),
            (
                vec!["--end-date", "2026-13-01"],
                "invalid value for '--end-date': endDate must be an ISO 8601 date",
            ),
            (
                vec!["--start-date", "2026-12-02", "--end-date", "2026-12-01"],
                "startDate must not be after endDate",
            ),
            (
                vec!["--limit", "0"],
                "invalid value for '--limit': limit must be a whole number from 1 to 1000",
            ),
            (vec!["--limit", "ten"], "limit must be a whole number"),
            (
                vec!["--offset", "100001"],
                "offset must be a whole number from 0 to 100000",
            ),
        ] {
            let error = history(&args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
            assert!(error.contains("enrichctl credits history"), "{error}");
        }
    }

    #[test]
    fn a_deployed_target_is_a_stack_or_a_table_and_never_mints_tokens() {
        let cli = parse(&[
            "--table",
            "enrichment-prod",
            "credits",
            "balance",
            "--org",
            "o",
        ]);
        assert!(matches!(
            cli.unwrap().target(),
            Target::Table("enrichment-prod")
        ));
        // Global options go after the subcommand too.
        let cli = parse(&[
            "credits",
            "balance",
            "--org",
            "o",
            "--stack-name",
            "enrichment",
        ]);
        assert!(matches!(cli.unwrap().target(), Target::Stack("enrichment")));
        let cli = parse(&["credits", "balance", "--org", "o"]).unwrap();
        assert!(matches!(cli.target(), Target::Local(_)));
        let both = parse(&[
            "--table",
            "enrichment-prod",
            "--stack-name",
            "enrichment",
            "credits",
            "balance",
            "--org",
            "o",
        ]);
        assert_eq!(both.err().unwrap().kind(), ErrorKind::ArgumentConflict);
        for bad in ["ab", "has space", "enrichment/prod", "tablé"] {
            assert!(
                parse(&["--table", bad, "credits", "balance", "--org", "o"]).is_err(),
                "{bad}"
            );
        }
        for bad in ["", "two words"] {
            assert!(parse(&["--stack-name", bad, "credits", "balance", "--org", "o"]).is_err());
        }
        for target in [
            ["--table", "enrichment-prod"],
            ["--stack-name", "enrichment"],
        ] {
            let mut args = target.to_vec();
            args.extend(["token", "--user", "u", "--org", "o"]);
            let error = parse(&args).err().unwrap();
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
            assert!(error.to_string().contains("local stack only"), "{error}");
        }
    }

    #[tokio::test]
    async fn token_refuses_a_deployed_target_before_any_call() {
        let cli = Cli::try_parse_from([
            "enrichctl",
            "--stack-name",
            "enrichment",
            "token",
            "--user",
            "u",
            "--org",
            "o",
        ])
        .unwrap();
        let error = execute(cli).await.unwrap_err();
        assert!(error.contains("local stack only"), "{error}");
    }

    #[test]
    fn the_table_is_the_stack_output_table_name() {
        use aws_sdk_cloudformation::primitives::DateTime;
        use aws_sdk_cloudformation::types::{Output, Stack, StackStatus};
        let output = |key: &str, value: &str| {
            Output::builder()
                .output_key(key)
                .output_value(value)
                .build()
        };
        let stack = |outputs: Vec<Output>| {
            Stack::builder()
                .stack_name("enrichment")
                .creation_time(DateTime::from_secs(0))
                .stack_status(StackStatus::CreateComplete)
                .set_outputs(Some(outputs))
                .build()
        };
        let deployed = stack(vec![
            output("ApiUrl", "https://api.example"),
            output("TableName", "enrichment-prod"),
            output("JobsQueueUrl", "https://sqs.example/jobs"),
        ]);
        assert_eq!(table_output(&deployed).as_deref(), Some("enrichment-prod"));
        assert_eq!(table_output(&stack(vec![output("ApiUrl", "x")])), None);
        assert_eq!(table_output(&stack(vec![output("TableName", "")])), None);
        assert_eq!(table_output(&stack(Vec::new())), None);
    }

    #[test]
    fn the_template_names_the_table_in_its_outputs() {
        let template = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
        let outputs = &template[template.find("\nOutputs:").expect("Outputs")..];
        assert!(
            outputs.contains(&format!("\n  {TABLE_OUTPUT}:\n"))
                && outputs.contains(&format!("Value: !Ref {TABLE_RESOURCE}")),
            "template.yaml's Outputs must name the table as {TABLE_OUTPUT}"
        );
        assert!(template.contains(&format!(
            "\n  {TABLE_RESOURCE}:\n    Type: AWS::DynamoDB::Table"
        )));
    }

    #[test]
    fn org_and_user_ids_must_be_identifiers() {
        let max = "a".repeat(128);
        let over = "a".repeat(129);
        for bad in ["", "org demo", "org/demo", "org#1", "órg", over.as_str()] {
            for args in [
                vec!["token", "--user", "u", "--org", bad],
                vec!["token", "--user", bad, "--org", "o"],
                vec!["credits", "grant", "--org", bad, "--amount", "1"],
                vec!["credits", "balance", "--org", bad],
                vec!["people", "import", "--org", bad, "people.csv"],
                vec!["people", "show", "--org", bad, "id"],
            ] {
                assert!(parse(&args).is_err(), "{args:?}");
            }
        }
        for good in ["org_demo", "org-2", "ORG_2x", max.as_str()] {
            assert!(parse(&["token", "--user", good, "--org", good]).is_ok());
            assert!(parse(&["credits", "balance", "--org", good]).is_ok());
        }
    }

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A private stack (worker off), with its `stack.json` written in its state folder as
    /// `local-stack` does.
    async fn start() -> (Stack, PathBuf) {
        let mut options = Options::for_repo(&repo_root());
        options.state_dir = std::env::temp_dir().join(format!("enrichctl-test-{}", Uuid::new_v4()));
        options.persist = false;
        options.port = 0;
        options.local_worker = false;
        let state_dir = options.state_dir.clone();
        let stack = Stack::start(options).await.expect("local stack starts");
        std::fs::write(
            state_dir.join("stack.json"),
            serde_json::to_string(&stack.info).unwrap(),
        )
        .unwrap();
        (stack, state_dir)
    }

    async fn enrichctl(state_dir: &Path, args: &[&str]) -> Result<String, String> {
        let state = state_dir.to_str().unwrap();
        let mut all = vec!["--state-dir", state];
        all.extend_from_slice(args);
        execute(parse(&all).unwrap()).await
    }

    #[tokio::test]
    async fn a_grant_never_takes_the_balance_past_the_maximum() {
        let (stack, state) = start().await;
        stack
            .store
            .grant_credits("org_rich", enrichment::store::MAX_BALANCE - 10)
            .await
            .unwrap();
        let error = enrichctl(
            &state,
            &["credits", "grant", "--org", "org_rich", "--amount", "11"],
        )
        .await
        .unwrap_err();
        assert!(error.contains("nothing was granted"), "{error}");
        let balance = enrichctl(&state, &["credits", "balance", "--org", "org_rich"]).await;
        assert_eq!(
            balance.unwrap(),
            (enrichment::store::MAX_BALANCE - 10).to_string()
        );
        let granted = enrichctl(
            &state,
            &["credits", "grant", "--org", "org_rich", "--amount", "10"],
        )
        .await;
        assert_eq!(granted.unwrap(), enrichment::store::MAX_BALANCE.to_string());
        let granted = enrichctl(
            &state,
            &[
                "credits",
                "grant",
                "--org",
                "org_new",
                "--amount",
                "1000000000",
            ],
        )
        .await;
        assert_eq!(granted.unwrap(), "1000000000");
        // The local stack takes the new options too: a keyed grant adds once, and the history
        // shows it.
        let keyed = [
            "credits",
            "grant",
            "--org",
            "org_new",
            "--amount",
            "5",
            "--source",
            "stripe_purchase",
            "--idempotency-key",
            "evt_1",
        ];
        assert_eq!(enrichctl(&state, &keyed).await.unwrap(), "1000000005");
        assert_eq!(
            enrichctl(&state, &keyed).await.unwrap(),
            "already granted (idempotency key evt_1); balance 1000000005"
        );
        let history = enrichctl(&state, &["credits", "history", "--org", "org_new"]).await;
        let history: serde_json::Value = serde_json::from_str(&history.unwrap()).unwrap();
        assert_eq!(history["count"], 2);
        let mut sources: Vec<&str> = history["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["source"].as_str().unwrap())
            .collect();
        sources.sort_unstable();
        assert_eq!(sources, ["manual", "stripe_purchase"]);
        stack.shutdown().await;
    }

    #[tokio::test]
    async fn a_failed_import_past_the_first_group_leaves_nothing_behind() {
        let (stack, state) = start().await;
        let people: Vec<Person> = (0..250)
            .map(|i| Person {
                id: Uuid::new_v4(),
                first_name: Some(format!("First{i}")),
                last_name: Some(format!("Last{i}")),
                ..Person::default()
            })
            .collect();
        // Person 150 exists already: the second group's transaction is cancelled.
        let existing = people[150].clone();
        stack
            .store
            .create_people("org_a", std::slice::from_ref(&existing))
            .await
            .unwrap();
        let error = import_people(&stack.store, "org_a", &people)
            .await
            .unwrap_err();
        assert!(error.contains("nothing was imported"), "{error}");
        for (i, person) in people.iter().enumerate() {
            let stored = stack.store.get_person("org_a", person.id).await.unwrap();
            assert_eq!(stored.is_some(), i == 150, "person {i}");
        }

        // The same through the command: every row valid, every id printed, all written.
        let rows: String = (0..230).map(|i| format!("First{i},Last{i},,,\n")).collect();
        let file = csv_file(&format!("{HEADER}{rows}"));
        let output = enrichctl(
            &state,
            &["people", "import", "--org", "org_b", file.to_str().unwrap()],
        )
        .await
        .unwrap();
        let ids: Vec<Uuid> = output
            .lines()
            .map(|l| Uuid::parse_str(l).unwrap())
            .collect();
        assert_eq!(ids.len(), 230);
        for id in &ids {
            assert!(
                stack
                    .store
                    .get_person("org_b", *id)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        stack.shutdown().await;
    }

    #[tokio::test]
    async fn a_stack_json_left_by_a_stopped_stack_says_not_running() {
        let (stack, state) = start().await;
        assert!(
            enrichctl(&state, &["credits", "balance", "--org", "o"])
                .await
                .is_ok()
        );
        stack.shutdown().await;
        for args in [
            vec!["token", "--user", "u", "--org", "o"],
            vec!["credits", "balance", "--org", "o"],
            vec!["credits", "grant", "--org", "o", "--amount", "1"],
            vec!["people", "show", "--org", "o", &Uuid::nil().to_string()],
        ] {
            let error = enrichctl(&state, &args).await.unwrap_err();
            assert!(
                error.contains("the local stack is not running") && error.contains("left over"),
                "{args:?}: {error}"
            );
        }
        let empty = std::env::temp_dir().join(format!("enrichctl-none-{}", Uuid::new_v4()));
        let error = enrichctl(&empty, &["credits", "balance", "--org", "o"])
            .await
            .unwrap_err();
        assert!(error.contains("not running (no "), "{error}");
    }
}
