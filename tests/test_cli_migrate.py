from edgeworker import migrate

ALL = [m.label for m in migrate.discover()]


def test_migrate_creates_and_applies_in_order(run_cli):
    result = run_cli("migrate")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"applied {label}" for label in ALL]
    assert run_cli("migrate").stdout == "up to date\n"


def test_check_exits_3_when_pending_and_0_when_current(run_cli):
    result = run_cli("migrate", "--check")
    assert result.exit_code == 3
    assert result.stdout == f"{len(ALL)} pending: {', '.join(ALL)}\n"
    assert not run_cli.db.exists()  # checking creates nothing
    run_cli.ok("migrate")
    result = run_cli("migrate", "--check")
    assert (result.exit_code, result.stdout) == (0, "up to date\n")


def test_dry_run_lists_without_applying(run_cli):
    run_cli.ok("migrate", "--to", "2")
    result = run_cli("migrate", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"would apply {label}" for label in ALL[2:]]
    assert run_cli("migrate", "--check").exit_code == 3


def test_migrate_to_003_is_the_seeds_step(run_cli):
    assert run_cli.ok("migrate", "--to", "3").splitlines() == [f"applied {x}" for x in ALL[:3]]
    result = run_cli("jobs", "list")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {run_cli.db}: database needs migrations "
                             f"({', '.join(ALL[3:])}); run `edgeworker migrate`\n")


def test_unknown_target(run_cli):
    result = run_cli("migrate", "--to", "99")
    assert (result.exit_code, result.stderr) == (1, "Error: no migration has version 99\n")
