//! The control-plane commands (`keys`, `compartments`, `rewrap`) over a state directory or a
//! PostgreSQL database, printing the reference API's JSON shapes.

use std::process::ExitCode;

use cmek::control::{
    Actor, ControlPlane, CreateExternalKey, ExternalKeyId, ProviderConfig, ValidationStatus,
};
use cmek::{CompartmentId, Error, ErrorKind};
use serde::Serialize;

use crate::cli::{CompartmentsCommand, KeysCommand, StateArgs};
use crate::state::{Create, open_plane};

async fn open(state: &StateArgs, create: Create) -> cmek::Result<(ControlPlane, Actor)> {
    let plane = open_plane(&state.state, state.provider_key.as_deref(), create).await?;
    Ok((plane, Actor::new(&state.actor)))
}

/// A local key file named relative to the working directory, made absolute: the stored
/// configuration is used from other directories later.
fn absolute_key_file(config: &mut ProviderConfig) -> cmek::Result<()> {
    // An empty path is left for validation to name the field.
    if let ProviderConfig::Local { key_file } = config
        && !key_file.is_empty()
    {
        *key_file = std::path::absolute(&*key_file)?.display().to_string();
    }
    Ok(())
}

fn print(value: &impl Serialize) -> cmek::Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Configuration, e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// JSON text, `@FILE` or `-` (stdin).
fn json_argument<T: serde::de::DeserializeOwned>(arg: &str, what: &str) -> cmek::Result<T> {
    let text = match arg {
        "-" => String::from_utf8(crate::read_input(None)?)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("{what} is not UTF-8")))?,
        _ => match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)?,
            None => arg.to_owned(),
        },
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{what}: {e}")))
}

#[derive(Serialize)]
struct List<T> {
    data: Vec<T>,
}

/// `cmek keys …`.
pub(crate) async fn keys(command: KeysCommand) -> cmek::Result<ExitCode> {
    match command {
        KeysCommand::Create {
            state,
            body,
            local_key_file,
            display_name,
        } => {
            let mut request: CreateExternalKey = match (body, local_key_file) {
                (Some(body), _) => json_argument(&body, "the request body")?,
                (None, Some(path)) => {
                    let key_file = std::path::absolute(&path)?.display().to_string();
                    CreateExternalKey::new(display_name, ProviderConfig::Local { key_file })
                }
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "give --body or --local-key-file",
                    ));
                }
            };
            absolute_key_file(&mut request.provider_config)?;
            let (plane, actor) = open(&state, Create::Yes).await?;
            print(&plane.create_external_key(&actor, request).await?)?;
        }
        KeysCommand::List { state } => {
            let (plane, _) = open(&state, Create::No).await?;
            print(&List {
                data: plane.external_keys().await?,
            })?;
        }
        KeysCommand::Show { state, id } => {
            let (plane, _) = open(&state, Create::No).await?;
            print(&plane.external_key(&ExternalKeyId::new(id)?).await?)?;
        }
        KeysCommand::Validate { state, id } => {
            let (plane, actor) = open(&state, Create::No).await?;
            let result = plane
                .validate_external_key(&actor, &ExternalKeyId::new(id)?)
                .await?;
            print(&result)?;
            if result.status != ValidationStatus::Success {
                return Ok(ExitCode::FAILURE);
            }
        }
        KeysCommand::Rotate {
            state,
            id,
            provider_config,
        } => {
            let mut config: ProviderConfig =
                json_argument(&provider_config, "the provider config")?;
            absolute_key_file(&mut config)?;
            let (plane, actor) = open(&state, Create::No).await?;
            print(
                &plane
                    .rotate_external_key(&actor, &ExternalKeyId::new(id)?, config)
                    .await?,
            )?;
        }
        KeysCommand::Delete { state, id, force } => {
            let (plane, actor) = open(&state, Create::No).await?;
            print(
                &plane
                    .delete_external_key(&actor, &ExternalKeyId::new(id)?, force)
                    .await?,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cmek compartments …`.
pub(crate) async fn compartments(command: CompartmentsCommand) -> cmek::Result<ExitCode> {
    match command {
        CompartmentsCommand::Create {
            state,
            external_key_id,
        } => {
            let (plane, actor) = open(&state, Create::Yes).await?;
            let key = external_key_id.map(ExternalKeyId::new).transpose()?;
            print(&plane.create_compartment(&actor, key.as_ref()).await?)?;
        }
        CompartmentsCommand::Attach {
            state,
            compartment_id,
            external_key_id,
        } => {
            let (plane, actor) = open(&state, Create::No).await?;
            let compartment = CompartmentId::new(compartment_id)?;
            let key = ExternalKeyId::new(external_key_id)?;
            print(
                &plane
                    .attach_external_key(&actor, &compartment, &key)
                    .await?,
            )?;
        }
        CompartmentsCommand::Show {
            state,
            compartment_id,
        } => {
            let (plane, _) = open(&state, Create::No).await?;
            print(
                &plane
                    .compartment(&CompartmentId::new(compartment_id)?)
                    .await?,
            )?;
        }
        CompartmentsCommand::List { state } => {
            let (plane, _) = open(&state, Create::No).await?;
            print(&List {
                data: plane.compartments().await?,
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cmek rewrap …`: progress on stderr, the finished job on stdout; fails when records were
/// left unreadable.
pub(crate) async fn rewrap(state: StateArgs, id: String, batch: usize) -> cmek::Result<ExitCode> {
    let (plane, actor) = open(&state, Create::No).await?;
    let id = ExternalKeyId::new(id)?;
    let job = plane
        .rewrap(&actor, &id, batch, |job| {
            eprintln!(
                "rewrap {}: examined {}, rewrapped {}, already current {}, unreadable {}",
                job.external_key_id,
                job.examined,
                job.rewrapped,
                job.already_current,
                job.unreadable
            );
        })
        .await?;
    print(&job)?;
    Ok(if job.unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cmek activity …`: one page of the activity feed.
pub(crate) async fn activity(state: StateArgs, after: u64, limit: usize) -> cmek::Result<ExitCode> {
    let (plane, _) = open(&state, Create::No).await?;
    print(&plane.activity(after, limit).await?)?;
    Ok(ExitCode::SUCCESS)
}
