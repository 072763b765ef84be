"""`hirune reproduce NOTE`: a note's central claim at digit scale, in one command.

Each note is one function of a budget -- tiny (seconds: what the tests run), small (minutes
on two CPU cores), full (the README's figures) -- that measures the claim and returns a
`playbook.report.Report` (a table, notes under it, the raw numbers, a figure).  The command
prints the table and writes reports/NOTE/ (index.html with the table and the figure,
NOTE.json with every number, NOTE.png).

    registry.py   the notes by name: what each shows, its cost per budget
    page.py       the report folder: index.html, JSON, PNG
    sampling.py   DDIM against DDPM: quality against steps and eta, on the exact mixture
    memory.py     ZeRO's memory per GPU (the paper's figure 1), from hirune's planner
    digits.py     DDPM, Improved DDPM, v-prediction: networks trained on the digits at the budget,
                  scored by the shipped evaluator and the variational bound
    toys.py       trained on a 2-D toy: reflow against 1-RF and OT flow matching; NCSN and the score SDEs
    likelihood.py normalizing flows' exact likelihood: the log-determinant, the NLL against the true density
    runs.py       the trained notes' runs (a preset for a budget's steps, in a temporary folder) and baselines
    video/        the video notes: video-vae, cogvideox (each trains its runs at the budget)

The large-model training notes are `hirune playbook`'s measurements, registered here too,
so that `hirune reproduce --list` names every note.
"""

from .registry import BUDGETS, NOTES, get

__all__ = ["BUDGETS", "NOTES", "get"]
