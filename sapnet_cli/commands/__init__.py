"""One module per subcommand; each exposes the command function registered in `sapnet_cli.app`."""
