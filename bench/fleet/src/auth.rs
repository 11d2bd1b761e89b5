//! `--etcd-user` / `--etcd-password-file` for the bench tools, which talk
//! to etcd directly (hollow nodes with the agent's user, the driver with
//! the scheduler's).

use anyhow::Context;
use etcd_client::{Client, ConnectOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct EtcdAuth {
    /// etcd user, when etcd has auth on.
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// File holding that user's password (0600).
    #[arg(long, requires = "etcd_user")]
    pub etcd_password_file: Option<std::path::PathBuf>,
}

impl EtcdAuth {
    pub async fn connect(&self, endpoints: &[String]) -> anyhow::Result<Client> {
        let mut options = ConnectOptions::new();
        if let Some(user) = &self.etcd_user {
            let path = self
                .etcd_password_file
                .as_ref()
                .context("--etcd-user needs --etcd-password-file")?;
            let password =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            options = options
                .with_user(user.clone(), password.trim().to_owned())
                .with_auto_token_refresh(true);
        }
        Client::connect(endpoints, Some(options))
            .await
            .context("connect")
    }
}
