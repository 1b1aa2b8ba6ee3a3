//! `enrichctl`: admin CLI for the local stack started by `make run`. It finds the stack through
//! `<state>/stack.json` (state folder `.local`, or `--state-dir` / `LOCAL_STATE_DIR`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use enrichment::domain::Person;
use enrichment::store::Store;
use local_stack::{StackInfo, devkey, dynamodb_config};
use uuid::Uuid;

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
    /// Print a session token the local stack accepts (RS256, signed with its dev key).
    Token {
        /// User id (`sub`, the enrichment's `createdBy`).
        #[arg(long)]
        user: String,
        /// Organization id (`o.id`).
        #[arg(long)]
        org: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
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
    /// Add credits to an organization's balance; prints the new balance.
    Grant {
        #[arg(long)]
        org: String,
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        amount: i64,
    },
    /// Print an organization's balance.
    Balance {
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum People {
    /// Import people from a CSV file with the header
    /// `first_name,last_name,company_name,company_domain,linkedin_url`; prints one person id per
    /// data row, in order. Nothing is written unless every row is valid.
    Import {
        #[arg(long)]
        org: String,
        file: PathBuf,
    },
    /// Print a person, with its emails and phones, as JSON.
    Show {
        #[arg(long)]
        org: String,
        person_id: String,
    },
}

const COLUMNS: [&str; 5] = [
    "first_name",
    "last_name",
    "company_name",
    "company_domain",
    "linkedin_url",
];

fn stack_info(state_dir: &Path) -> Result<StackInfo, String> {
    let path = state_dir.join("stack.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "the local stack is not running (no {}): start it with `make run`",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a stack description: {e}", path.display()))
}

fn store(info: &StackInfo) -> Store {
    let client = aws_sdk_dynamodb::Client::from_conf(dynamodb_config(&info.dynamodb_url).build());
    Store::new(client, &info.table_name)
}

/// Reads and validates the CSV: every row must name a person (a LinkedIn profile URL, or a
/// first and last name); a LinkedIn URL must be a linkedin.com profile and a company domain a
/// bare domain. The first bad row is reported by its line number.
fn read_people(file: &Path) -> Result<Vec<Person>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .clone();
    let index: Vec<usize> = COLUMNS
        .iter()
        .map(|column| {
            headers
                .iter()
                .position(|h| h == *column)
                .ok_or_else(|| format!("{}: the header has no column {column:?}", file.display()))
        })
        .collect::<Result<_, _>>()?;
    let mut people = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.map_err(|e| format!("{} line {line}: {e}", file.display()))?;
        let value = |i: usize| {
            record
                .get(index[i])
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        let person = Person {
            id: Uuid::new_v4(),
            first_name: value(0),
            last_name: value(1),
            company_name: value(2),
            company_domain: value(3),
            linkedin_url: value(4),
            ..Person::default()
        };
        let bad = |why: &str| format!("{} line {line}: {why}", file.display());
        if person.linkedin_url.is_none()
            && (person.first_name.is_none() || person.last_name.is_none())
        {
            return Err(bad(
                "a row needs a linkedin_url or both first_name and last_name",
            ));
        }
        if let Some(url) = &person.linkedin_url
            && !url.to_lowercase().contains("linkedin.com/in/")
        {
            return Err(bad(&format!(
                "linkedin_url {url:?} is not a linkedin.com/in/ profile URL"
            )));
        }
        if let Some(domain) = &person.company_domain
            && (domain.contains(['/', ' ', '@', ':']) || !domain.contains('.'))
        {
            return Err(bad(&format!(
                "company_domain {domain:?} is not a domain like example.com"
            )));
        }
        people.push(person);
    }
    if people.is_empty() {
        return Err(format!("{}: no data rows", file.display()));
    }
    Ok(people)
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Token {
            user,
            org,
            expires_in,
        } => {
            let info = stack_info(&cli.state_dir)?;
            let token = devkey::sign(
                &info.dev_key_path,
                &info.gateway_url,
                &user,
                &org,
                Duration::from_secs(expires_in),
            )?;
            println!("{token}");
        }
        Command::Credits { command } => {
            let info = stack_info(&cli.state_dir)?;
            let balance = match command {
                Credits::Grant { org, amount } => store(&info).grant_credits(&org, amount).await,
                Credits::Balance { org } => store(&info).credit_balance(&org).await,
            }
            .map_err(|e| e.to_string())?;
            println!("{balance}");
        }
        Command::People {
            command: People::Import { org, file },
        } => {
            let people = read_people(&file)?;
            let info = stack_info(&cli.state_dir)?;
            store(&info)
                .put_people(&org, &people)
                .await
                .map_err(|e| e.to_string())?;
            for person in people {
                println!("{}", person.id);
            }
        }
        Command::People {
            command: People::Show { org, person_id },
        } => {
            let id = Uuid::parse_str(&person_id)
                .map_err(|_| format!("{person_id:?} is not a person id (UUID)"))?;
            let info = stack_info(&cli.state_dir)?;
            let person = store(&info)
                .get_person(&org, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no person {id} in org {org}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&person).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("enrichctl: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("people-{}.csv", Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn import_reads_rows_in_order_with_empty_cells_as_none() {
        let file = csv_file(
            "first_name,last_name,company_name,company_domain,linkedin_url\n\
             Ada,Lovelace,Analytical,analytical.test,\n\
             ,,,,https://www.linkedin.com/in/grace-h\n",
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
    fn a_missing_column_is_reported() {
        let file = csv_file("first_name,last_name\nAda,Lovelace\n");
        assert!(read_people(&file).unwrap_err().contains("company_name"));
    }
}
