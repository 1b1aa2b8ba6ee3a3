//! `enrichctl`: admin CLI for the local stack started by `make run`. It finds the stack through
//! `<state>/stack.json` (state folder `.local`, or `--state-dir` / `LOCAL_STATE_DIR`), and says
//! the stack is not running when nothing answers at the gateway that file names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use clap::{Parser, Subcommand};
use enrichment::domain::Person;
use enrichment::people::{PersonInput, PersonView, creation_time};
use enrichment::store::Store;
use local_stack::{StackInfo, devkey, dynamodb_config, gateway_answers};
use uuid::Uuid;

/// The most credits one `credits grant` adds.
const MAX_GRANT: i64 = 1_000_000_000;
/// The most characters a CSV cell may hold.
const MAX_CELL_CHARS: usize = 1024;
/// The most bytes the cells of one CSV row may hold together.
const MAX_ROW_BYTES: usize = 16 * 1024;

#[derive(Parser)]
#[command(name = "enrichctl", about = "Admin CLI for the local enrichment stack")]
struct Cli {
    /// The local stack's state folder.
    #[arg(long, env = "LOCAL_STATE_DIR", default_value = ".local", global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a session token the local stack accepts (RS256, signed with its dev key). Its
    /// issuer is the gateway's URL: a stack restarted on another PORT refuses it.
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
}

#[derive(Subcommand)]
enum Credits {
    /// Add credits to an organization's balance; prints the new balance. A grant that would
    /// take the balance above 1000000000000000 is refused.
    Grant {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
        /// Credits to add, 1 to 1000000000.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_GRANT))]
        amount: i64,
    },
    /// Print an organization's balance.
    Balance {
        /// Organization id: 1 to 128 of A-Z a-z 0-9 _ -.
        #[arg(long, value_parser = identifier)]
        org: String,
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
async fn import_people(info: &StackInfo, org: &str, people: &[Person]) -> Result<(), String> {
    Store::new(dynamodb(info), &info.table_name)
        .create_people(org, people)
        .await
        .map_err(|e| format!("nothing was imported: {e}"))
}

/// Runs a command; returns what it prints.
async fn execute(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Token {
            user,
            org,
            expires_in,
        } => {
            let info = stack_info(&cli.state_dir).await?;
            devkey::sign(
                &info.dev_key_path,
                &info.gateway_url,
                &user,
                &org,
                Duration::from_secs(expires_in),
            )
        }
        Command::Credits { command } => {
            let info = stack_info(&cli.state_dir).await?;
            let store = store(&info);
            let balance = match command {
                Credits::Grant { org, amount } => store.grant_credits(&org, amount).await,
                Credits::Balance { org } => store.credit_balance(&org).await,
            }
            .map_err(|e| e.to_string())?;
            Ok(balance.to_string())
        }
        Command::People {
            command: People::Import { org, file },
        } => {
            let people = read_people(&file)?;
            let info = stack_info(&cli.state_dir).await?;
            import_people(&info, &org, &people).await?;
            Ok(people
                .iter()
                .map(|person| person.id.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Command::People {
            command: People::Show { org, person_id },
        } => {
            let id = Uuid::parse_str(&person_id)
                .map_err(|_| format!("{person_id:?} is not a person id (UUID)"))?;
            let info = stack_info(&cli.state_dir).await?;
            let person = store(&info)
                .get_person(&org, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no person {id} in org {org}"))?;
            serde_json::to_string_pretty(&PersonView::from(person)).map_err(|e| e.to_string())
        }
    }
}

#[tokio::main]
async fn main() {
    match execute(Cli::parse()).await {
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
        Cli::try_parse_from(std::iter::once("enrichctl").chain(args.iter().copied()))
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
        let error = import_people(&stack.info, "org_a", &people)
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
