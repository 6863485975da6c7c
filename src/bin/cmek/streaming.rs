//! Files of any size through the CLI: streamed envelopes in constant memory, output that
//! appears only once complete, range reads, and a progress bar on a terminal.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use cmek::stream::{ByteRange, FileSource, StreamForm, read_head};
use cmek::{Client, CompartmentId, Error, ErrorKind};
use indicatif::{ProgressBar, ProgressStyle};

/// Inputs this long or longer are encrypted as streamed envelopes (shorter ones as one
/// envelope, unless `--stream`).
pub(crate) const STREAM_THRESHOLD: usize = 1 << 20;

/// Below this size no progress bar is drawn.
const PROGRESS_FROM: u64 = 64 << 20;

/// Bytes moved per read while streaming.
const COPY_BUF: usize = 256 << 10;

/// An I/O error as a crate error of the matching kind, saying what failed.
fn io_error(e: io::Error, what: String) -> Error {
    let kind = Error::from(io::Error::from(e.kind())).kind();
    Error::new(kind, format!("{what}: {e}"))
}

/// An input file or stdin, and its length when known.
pub(crate) fn open_input(path: Option<&Path>) -> cmek::Result<(Box<dyn Read + Send>, Option<u64>)> {
    match path {
        Some(p) if p != Path::new("-") => {
            let file =
                File::open(p).map_err(|e| io_error(e, format!("cannot read {}", p.display())))?;
            let len = file.metadata()?.len();
            Ok((Box::new(file), Some(len)))
        }
        _ => Ok((Box::new(io::stdin()), None)),
    }
}

/// Reads up to `limit` bytes (fewer only at the end of the input).
pub(crate) fn read_up_to(input: &mut dyn Read, limit: usize) -> cmek::Result<Vec<u8>> {
    let mut buf = Vec::new();
    input.take(limit as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Where output goes: a temporary file beside the target, renamed over it only when the
/// whole output was written (so a failed or truncated run leaves no partial file), or stdout.
pub(crate) struct Output {
    file: Option<(tempfile::NamedTempFile, PathBuf, bool)>,
    stdout: io::Stdout,
}

impl Output {
    /// Output to `path` (stdout if `None` or `-`), replacing an existing file only if `force`.
    pub(crate) fn create(path: Option<&Path>, force: bool) -> cmek::Result<Self> {
        let file = match path {
            Some(p) if p != Path::new("-") => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let temp = tempfile::Builder::new()
                    .prefix(".cmek-")
                    .tempfile_in(dir)
                    .map_err(|e| io_error(e, format!("cannot write in {}", dir.display())))?;
                Some((temp, p.to_owned(), force))
            }
            _ => None,
        };
        Ok(Self {
            file,
            stdout: io::stdout(),
        })
    }

    /// Where to write.
    pub(crate) fn writer(&mut self) -> Box<dyn Write + '_> {
        match &mut self.file {
            Some((temp, _, _)) => {
                Box::new(io::BufWriter::with_capacity(COPY_BUF, temp.as_file_mut()))
            }
            None => Box::new(self.stdout.lock()),
        }
    }

    /// Writes all of `bytes` and commits.
    pub(crate) fn write_all(mut self, bytes: &[u8]) -> cmek::Result<()> {
        {
            let mut writer = self.writer();
            writer.write_all(bytes)?;
            writer.flush()?;
        }
        self.commit()
    }

    /// Makes the output visible: renames the temporary file into place (after an fsync).
    pub(crate) fn commit(self) -> cmek::Result<()> {
        let Some((temp, target, force)) = self.file else {
            return Ok(());
        };
        temp.as_file().sync_all()?;
        let persisted = if force {
            temp.persist(&target)
        } else {
            temp.persist_noclobber(&target)
        };
        persisted.map(drop).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                super::already_exists(&target)
            } else {
                io_error(e.error, format!("cannot write {}", target.display()))
            }
        })
    }
}

/// A progress bar on stderr for long inputs when it is a terminal; hidden otherwise.
pub(crate) fn progress(total: Option<u64>, what: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() || total.is_some_and(|t| t < PROGRESS_FROM) {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// Copies `input` to `output` through `progress`.
fn copy(input: &mut dyn Read, output: &mut dyn Write, progress: &ProgressBar) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buf[..n])?;
        progress.inc(n as u64);
    }
}

/// An I/O error from a stream adapter, with the crate error inside it brought back out.
fn from_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(err) = inner.downcast::<Error>()
        {
            return *err;
        }
        return Error::new(ErrorKind::Transient, "the stream failed");
    }
    Error::from(e)
}

/// Encrypts `first` and the rest of `input` as a streamed envelope into `output`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn encrypt(
    client: &Client,
    compartment: &CompartmentId,
    aad: &[u8],
    form: StreamForm,
    first: &[u8],
    input: &mut dyn Read,
    total: Option<u64>,
    output: Output,
) -> cmek::Result<()> {
    let mut output = output;
    let encryptor = client.stream_encryptor(compartment, aad, form).await?;
    let bar = progress(total, "encrypting");
    {
        let mut writer = encryptor.into_writer(output.writer());
        writer.write_all(first).map_err(from_io)?;
        bar.inc(first.len() as u64);
        copy(input, &mut writer, &bar).map_err(from_io)?;
        writer.finish().map_err(from_io)?.flush()?;
    }
    bar.finish_and_clear();
    output.commit()
}

/// Decrypts the streamed envelope that starts with `first` and continues in `input` into
/// `output`; the output is committed only after the final chunk was authenticated.
pub(crate) async fn decrypt(
    client: &Client,
    compartment: &CompartmentId,
    aad: &[u8],
    first: Vec<u8>,
    input: &mut dyn Read,
    total: Option<u64>,
    output: Output,
) -> cmek::Result<()> {
    let mut output = output;
    let mut input = io::Cursor::new(first).chain(input);
    let head = read_head(&mut input).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::InvalidInput,
            format!("not a streamed envelope: {e}"),
        ),
        _ => Error::from(e),
    })?;
    let decryptor = client.stream_decryptor(compartment, &head, aad).await?;
    let bar = progress(total, "decrypting");
    bar.inc(head.len() as u64);
    {
        let mut reader = decryptor.into_reader(input);
        let mut writer = output.writer();
        copy(&mut reader, &mut writer, &bar).map_err(from_io)?;
        writer.flush()?;
    }
    bar.finish_and_clear();
    output.commit()
}

/// `START-END` (inclusive, as in HTTP), `START-` or `-N` (the last N bytes).
pub(crate) fn parse_range(s: &str) -> cmek::Result<ByteRange> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--range {s}: expected START-END (inclusive), START- or -N"),
        )
    };
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let number = |n: &str| n.parse::<u64>().map_err(|_| bad());
    match (start.is_empty(), end.is_empty()) {
        (true, false) => Ok(ByteRange::Suffix(number(end)?)),
        (false, true) => Ok(ByteRange::From(number(start)?)),
        (false, false) => {
            let (start, end) = (number(start)?, number(end)?);
            if end < start {
                return Err(bad());
            }
            Ok(ByteRange::Bounded(start..end.saturating_add(1)))
        }
        (true, true) => Err(bad()),
    }
}

/// Decrypts `range` of the streamed envelope in the file `path`, reading only what it needs.
pub(crate) async fn decrypt_range(
    client: &Client,
    compartment: &CompartmentId,
    aad: &[u8],
    path: &Path,
    range: ByteRange,
    output: Output,
) -> cmek::Result<()> {
    let source = FileSource::open(path).await?;
    let plaintext = client
        .decrypt_range(compartment, &source, range, aad)
        .await?;
    output.write_all(&plaintext)
}
