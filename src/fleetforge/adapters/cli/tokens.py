"""`fleetforge tokens create|list|revoke`: bearer tokens of the HTTP API, stored hashed."""

from __future__ import annotations

from typing import Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard, out, print_json
from fleetforge.adapters.cli.runs import ts
from fleetforge.adapters.cli.wiring import store_for
from fleetforge.core.tokens import create_token, revoke_token
from fleetforge.domain.tokens import parse_scope
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.tokens import TokenStore

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    tokens_app = typer.Typer(help="Create, list and revoke bearer tokens of the HTTP API (`fleetforge serve`).",
                             no_args_is_help=True)
    app.add_typer(tokens_app, name="tokens")

    @tokens_app.command("create")
    def create(
        scope: Annotated[str, typer.Option(
            "--scope", help="What the token may do: read (get, list, stream), submit (and submit runs) or "
                            "control (and cancel and steer runs).", show_default=False)],
        name: Annotated[str, typer.Option("--name", help="A label for `tokens list`, e.g. who holds it.")] = "api",
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print {\"id\", \"name\", \"scope\", \"token\"} as "
                                                            "JSON.")] = False,
    ) -> None:
        """Create a token and print it once: only its SHA-256 is stored, it cannot be shown again."""
        with guard():
            chosen = parse_scope(scope, "--scope")
            token, row = create_token(cast(TokenStore, store_for(store, data_dir)), chosen, name, SystemClock())
        if as_json:
            print_json({"id": row.id, "name": row.name, "scope": row.scope.value, "token": token})
        else:
            out.file.write(token + "\n")
            out.file.flush()
        err.print(f"token {row.id} ({row.scope.value}) created; it is printed once and cannot be shown again. "
                  f"Revoke it with `fleetforge tokens revoke {row.id}`.", highlight=False, markup=False)

    @tokens_app.command("list")
    def list_(
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """Every token: id, name, scope, created, revoked. Never the tokens themselves (they are not kept)."""
        with guard():
            rows = cast(TokenStore, store_for(store, data_dir)).list_tokens()
        if as_json:
            print_json([{"id": r.id, "name": r.name, "scope": r.scope.value, "created_at": ts(r.created_us),
                         "revoked_at": ts(r.revoked_us) or None} for r in rows])
            return
        table = Table("id", "name", "scope", "created", "revoked")
        table.columns[0].no_wrap = True
        for r in rows:
            table.add_row(r.id, escape(r.name), r.scope.value, ts(r.created_us), ts(r.revoked_us))
        out.print(table)

    @tokens_app.command("revoke")
    def revoke(
        token_id: Annotated[str, typer.Argument(help="The token's id, as `tokens list` shows it.",
                                                show_default=False)],
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Revoke a token: the API refuses it (401) from the next request on. Exit code 3 for an unknown id."""
        with guard():
            changed = revoke_token(cast(TokenStore, store_for(store, data_dir)), token_id, SystemClock())
        out.print("revoked" if changed else "already revoked", highlight=False)
