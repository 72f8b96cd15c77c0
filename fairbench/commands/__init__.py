"""CLI command modules. Each imports only typer/stdlib at module level so `fairbench --help` stays instant;
heavy libraries (torch, pandas, numpy) are imported inside the command bodies."""
