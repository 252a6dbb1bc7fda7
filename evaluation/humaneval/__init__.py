"""Human side-by-side evaluation (the PDM paper's Table 6): raters see two samples for one prompt and pick
the better-looking one and the one that matches the text better ("same" allowed).

    study.py   a study from the sample stage outputs of two or more runs; each rater's pair order and sides
    db.py      the votes in SQLite (one transaction per vote, a vote counted once per rater and pair)
    app.py     the web page (Flask; server-rendered HTML, a little vanilla JS for keyboard shortcuts)
    serve.py   serving it on 127.0.0.1 (elsewhere only with a study password)
    stats.py   Wilson intervals, the Table 6 shares, rater agreement, attention-check failures
    report.py  report.md / report.json; chart.py its bar chart
    cli.py     ``pt2i humaneval build | serve | report``

Nothing in the model library or the stages imports this package.
"""


class HumanEvalError(Exception):
    """A study cannot be built, served or reported; the message (one line) says why and what to do."""
