from buildsys.cli.main import entry

entry()
