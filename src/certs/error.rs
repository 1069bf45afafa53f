//! What can go wrong in the certificate store, worded for the operator who
//! has to fix it: what failed, on which input, and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot {action} {}: {source}; check that the user running gatehouse owns `server.data_dir` and the disk is not full", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is {size} bytes, more than the {limit} bytes a certificate file can hold; pass the PEM or PKCS#12 file itself", path.display())]
    InputTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    #[error("no certificate matches `{given}`; `gatehouse cert list` shows the thumbprints")]
    NotFound { given: String },

    #[error("`{given}` matches {} certificates ({}); give more digits of the thumbprint", matches.len(), matches.join(", "))]
    Ambiguous { given: String, matches: Vec<String> },

    #[error(
        "`{given}` is not a thumbprint; give at least 8 hex digits of the SHA-1 or SHA-256 thumbprint shown by `gatehouse cert list`"
    )]
    BadThumbprint { given: String },

    #[error("`{given}` is not a list of services; use `smtp`, `https`, `smtp,https` or `none`")]
    BadServices { given: String },

    #[error(
        "no name given; pass at least one --name (a DNS name such as mail.example.com, or an IP address)"
    )]
    NoNames,

    #[error("`{name}` cannot go into a certificate: {reason}")]
    BadName { name: String, reason: &'static str },

    #[error("cannot {what}: {reason}")]
    Generate { what: &'static str, reason: String },

    #[error("{} holds no certificate; give a PEM file with a `BEGIN CERTIFICATE` block, or a PKCS#12 (.pfx/.p12) file", path.display())]
    NoCertificateInFile { path: PathBuf },

    #[error("{} is neither PEM nor PKCS#12 ({reason}); convert it with `openssl x509 -inform der -in FILE -out FILE.pem` if it is a DER certificate", path.display())]
    UnknownFormat { path: PathBuf, reason: String },

    #[error("cannot parse a certificate in {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },

    #[error("{} holds a certificate but no private key, and no pending request matches it; import the PEM that contains the key, or the PKCS#12", path.display())]
    NoPrivateKey { path: PathBuf },

    #[error("{} holds an encrypted private key (`BEGIN ENCRYPTED PRIVATE KEY`), which gatehouse does not read; decrypt it with `openssl pkey -in FILE -out plain.pem`, or import a PKCS#12 file with --password-file", path.display())]
    EncryptedPemKey { path: PathBuf },

    #[error(
        "the private key in {key_file} does not match the certificate (public keys differ): {subject}; import the key that was generated together with this certificate's request"
    )]
    KeyMismatch { key_file: String, subject: String },

    #[error("the private key in {key_file} cannot be used: {reason}")]
    UnusableKey { key_file: String, reason: String },

    #[error("certificate {subject} expired on {date} (not_after); get a new one")]
    Expired { subject: String, date: String },

    #[error(
        "certificate {subject} has a {key_type} key, too weak to serve TLS; get a certificate with an ECDSA P-256 or RSA 2048+ key"
    )]
    WeakKey { subject: String, key_type: String },

    #[error("the chain in {} is broken: {subject} is not signed by the next certificate {next}; order the file leaf first, then each issuer, and leave out unrelated certificates", path.display())]
    ChainBroken {
        path: PathBuf,
        subject: String,
        next: String,
    },

    #[error("wrong PKCS#12 password (MAC check failed) for {}; check the file given to --password-file (one trailing newline is ignored)", path.display())]
    WrongPassword { path: PathBuf },

    #[error("cannot read the PKCS#12 file {}: {reason}", path.display())]
    Pkcs12 { path: PathBuf, reason: String },

    #[error("cannot write the PKCS#12 file: {reason}")]
    Pkcs12Write { reason: String },

    #[error("{} holds no private key for its certificate; export it again including the private key", path.display())]
    Pkcs12NoKey { path: PathBuf },

    #[error(
        "certificate {thumbprint} is already in the store; remove it first with `gatehouse cert remove {thumbprint}` if you want to replace it"
    )]
    AlreadyInStore { thumbprint: String },

    #[error(
        "cannot remove {thumbprint}: it is the only certificate enabled for SMTP; import or create another, enable it with `gatehouse cert enable THUMB --services smtp`, then remove this one"
    )]
    RemoveOnlySmtp { thumbprint: String },

    #[error(
        "cannot disable SMTP on {thumbprint}: it is the only certificate enabled for SMTP; import or create another, enable it with `gatehouse cert enable THUMB --services smtp`, then change this one"
    )]
    DisableOnlySmtp { thumbprint: String },

    #[error(
        "cannot remove the default certificate; make another default first with `gatehouse cert default THUMB`"
    )]
    RemoveDefault { thumbprint: String },

    #[error("{} already exists; choose another output path or delete the file first", path.display())]
    OutputExists { path: PathBuf },

    #[error(
        "an empty PKCS#12 password would leave the private key readable by anyone with the file; put a password in the --password-file"
    )]
    EmptyPassword,
}

impl CertError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.into();
        move |source| CertError::Io {
            action,
            path,
            source,
        }
    }
}
