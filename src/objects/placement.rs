//! Where an object's key comes from: its compartment, chosen from its path, and what its
//! AAD binds.

use std::fmt;
use std::sync::Arc;

use object_store::path::Path;

use crate::error::{Error, Result};
use crate::ids::CompartmentId;

type Rule = dyn Fn(&Path) -> Result<CompartmentId> + Send + Sync;

/// Which compartment each object belongs to, chosen from its path: the caller's choice.
///
/// ```
/// use cmek::CompartmentId;
/// use cmek::objects::Compartments;
/// use object_store::path::Path;
///
/// let by_tenant = Compartments::first_segment();
/// assert_eq!(by_tenant.of(&Path::from("tenant-a/2026/report.parquet"))?.as_str(), "tenant-a");
///
/// let one = Compartments::fixed(CompartmentId::new("tenant-b")?);
/// assert_eq!(one.of(&Path::from("anything"))?.as_str(), "tenant-b");
/// # Ok::<(), cmek::Error>(())
/// ```
#[derive(Clone)]
pub struct Compartments(Choice);

#[derive(Clone)]
enum Choice {
    Fixed(CompartmentId),
    FirstSegment,
    Custom(Arc<Rule>),
}

impl Compartments {
    /// Every object belongs to `compartment` (a store per tenant).
    pub fn fixed(compartment: CompartmentId) -> Self {
        Self(Choice::Fixed(compartment))
    }

    /// The path's first segment names the compartment: `tenant-a/2026/report.parquet` is in
    /// `tenant-a`. A path without segments, or whose first segment is not a valid
    /// compartment id, is refused.
    pub fn first_segment() -> Self {
        Self(Choice::FirstSegment)
    }

    /// Any rule: `rule` returns the compartment of a path, or an error for paths the store
    /// must refuse.
    pub fn from_fn(rule: impl Fn(&Path) -> Result<CompartmentId> + Send + Sync + 'static) -> Self {
        Self(Choice::Custom(Arc::new(rule)))
    }

    /// The compartment of the object at `path`.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a path the rule refuses.
    pub fn of(&self, path: &Path) -> Result<CompartmentId> {
        match &self.0 {
            Choice::Fixed(compartment) => Ok(compartment.clone()),
            Choice::FirstSegment => {
                let first = path.parts().next().ok_or_else(|| {
                    Error::invalid_input("an object at the root has no compartment segment")
                })?;
                CompartmentId::new(first.as_ref())
            }
            Choice::Custom(rule) => rule(path),
        }
    }
}

impl From<CompartmentId> for Compartments {
    fn from(compartment: CompartmentId) -> Self {
        Self::fixed(compartment)
    }
}

impl fmt::Debug for Compartments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Choice::Fixed(compartment) => f
                .debug_tuple("Compartments::Fixed")
                .field(compartment)
                .finish(),
            Choice::FirstSegment => f.write_str("Compartments::FirstSegment"),
            Choice::Custom(_) => f.write_str("Compartments::Custom(..)"),
        }
    }
}

/// What each object's AAD binds, besides its compartment (which the envelope always binds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathBinding {
    /// The object's path (the default): the AAD is the path's UTF-8 bytes, as
    /// `object_store` prints it (`tenant-a/2026/report.parquet`). An object copied or moved
    /// to another path by anything but this store fails to decrypt there; this store's own
    /// `copy` and `rename` re-encrypt.
    #[default]
    Path,
    /// Nothing: an empty AAD. Objects may then be copied and renamed within one compartment
    /// by the inner store itself (no bytes through this node), and two objects of one
    /// compartment swapped behind the store's back are not detected.
    None,
}

impl PathBinding {
    /// The AAD of the object at `path`.
    pub fn aad(self, path: &Path) -> &[u8] {
        match self {
            Self::Path => path.as_ref().as_bytes(),
            Self::None => &[],
        }
    }
}
