"""`diffclass label`: a local page that walks a person through the images `suggest` picks and fits
the head on their answers (session.py: what it does; server.py: how the page reaches it)."""


def serve(run) -> None:
    """`diffclass label`: start the session of `run` (runs.LabelRun) and serve its page until Ctrl-C."""
    import webbrowser

    from diffclass_cli.console import log
    from diffclass_cli.labeling.server import LabelServer
    from diffclass_cli.labeling.session import LabelSession

    session = LabelSession(run.pool, run.labels_table, budget=run.budget, out=run.out, classes=run.class_names,
                           source=run.source, seed=run.seed)
    server = LabelServer(session, run.host, run.port)
    log.info(f"labeling {len(session.pending())} images of {run.pool} ({len(session.labels)} labeled already); "
             f"answers go to {session.labels_path}")
    print(server.url, flush=True)
    if not run.no_browser:
        webbrowser.open(server.url)
    server.run()
