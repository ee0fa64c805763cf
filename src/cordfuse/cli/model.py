"""``cordfuse model install ZIP`` and ``cordfuse model list``: the models installed in the
user's data directory, which ``predict -m NAME`` takes."""

from __future__ import annotations

import argparse


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``model`` and its sub-commands ``install`` and ``list``.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "model",
        help="install a model zip, list the installed models",
        description="Installed models live in the user data directory ($CORDFUSE_HOME "
        "overrides it); `cordfuse predict -m NAME` predicts with one.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="verify a model zip and install it under a name")
    install.add_argument("zip", help="a model zip (cordfuse export-model)")
    install.add_argument("--name", help="the installed name (default: the model card's)")
    install.add_argument(
        "--overwrite", action="store_true", help="replace an installed model of that name"
    )
    actions.add_parser("list", help="the installed models with their card's summary")
    return parser


def run(args: argparse.Namespace) -> int:
    """Install a model, or list those installed.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0, or 1 when ``list`` finds an installed model that no longer
        verifies.

    Raises:
        CordfuseError: ``install``: the zip is refused, its checkpoints do not load, or the name
            is taken (without ``--overwrite``) or invalid.
    """
    from cordfuse.models import PackagedModel, install_model, installed_models, models_dir

    if args.action == "install":
        package = install_model(args.zip, name=args.name, overwrite=args.overwrite)
        print(f"installed {package.name} -> {package.path}")
        print(f"{package.summary}; licence {package.licence}")
        print(f"predict with: cordfuse predict -m {package.name} -i INPUT -o OUT")
        return 0
    found = installed_models()
    if not found:
        print(f"no model installed in {models_dir()}")
        return 0
    print(f"installed in {models_dir()}:")
    for entry in found:
        if isinstance(entry, PackagedModel):
            print(
                f"{entry.name}: {entry.summary} (licence {entry.licence}; SHA-256 {entry.sha256})"
            )
        else:
            print(f"{entry[0]}: DAMAGED, {entry[1]}")
    return 1 if any(not isinstance(e, PackagedModel) for e in found) else 0
