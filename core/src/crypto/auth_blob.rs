//! `AuthBlob`: a versioned, authenticated blob in two slots (being written).
