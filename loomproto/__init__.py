"""What every LoomFS daemon and client speaks: the wire protocol (`wire`, `rpc`),
typed errors (`errors`), the cluster map and configuration (`clustermap`,
`config`) and layout math (`layout`)."""
