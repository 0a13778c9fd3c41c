//! `cargo xtask demo`: the whole platform on a realistic batch (built in the demo issue).

use clap::Args;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of bills to enqueue.
    #[arg(long, default_value_t = 10_000)]
    pub bills: usize,
}

pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}
