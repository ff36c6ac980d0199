from diffclass_cli.cli import app

app(prog_name="diffclass")
