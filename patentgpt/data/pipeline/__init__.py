"""The IP corpus pipeline: ingest, clean, tag language, filter, deduplicate, rewrite, synthesize,
tokenize stage mixtures and write a data card.

``patentgpt data run configs/data/<corpus>.yaml`` runs the steps its config lists, in order
(:mod:`.runner`). Every step reads the document stream of the step before it and writes its own
directory ``OUTPUT_DIR/<step>/`` through a hidden temporary directory that is renamed into place
only when the step has finished, with a ``DONE`` marker (holding the step's fingerprint and
statistics) written last. A rerun skips every step whose ``DONE`` fingerprint still matches the
config; a killed step leaves only its temporary directory, which the next run removes and redoes.

Document record
---------------
The contract between steps (one JSON object per line in ``<step>/docs.jsonl[.gz]``)::

    {
      "id":     str,            # the record's own id (publication number, ...) or "<source>:<n>"
      "source": str,            # name of the config source it came from
      "loc":    "file:N",       # where it was read: JSONL line N, or record N (1-based) of CSV/JSON/parquet
      "lang":   "zh" | "en" | "other",
      "text":   str,            # the training text (structured patents rendered by the source template)
      "meta":   {               # structured fields, kept so later steps (synthesis) can use them
        "title": str, "abstract": str, "claims": [str], "description": str,
        "ipc": [str], "cpc": [str], "date": str, "kind": "patent" | "text",
        "declared_lang": str | None,
        "extra": {...},                    # the source's `extra_fields`, as read
        "records": int,                    # only when > 1 records were joined (group_by)
      }
    }

Steps may add keys to ``meta`` (``lang`` adds ``lang_stats``; ``rewrite`` adds
``rewritten_from`` at top level). Missing structured fields are absent, never ``null``.

Accounting
----------
Every record read is either kept or removed with exactly one reason: ingest reasons
(``malformed_json``, ``undecodable_utf8``, ``not_an_object``, ``missing_field``, ``wrong_type``),
``empty_after_clean``, ``lang_not_kept``, one reason per quality filter, ``exact_dup`` and
``near_dup``. Each removal is written with its reason and source location to the step's
``rejects.jsonl`` (and all of them to ``OUTPUT_DIR/rejects.jsonl``); ``report.json`` checks
``read == kept + sum(removed)`` per source before it is written.

Modules: :mod:`.config` (schema), :mod:`.ingest` (rendering: :mod:`patentgpt.data.render`), :mod:`.clean`,
:mod:`.langid`, :mod:`.filters`, :mod:`.dedup` (+ :mod:`.minhash`), :mod:`.rewrite`,
:mod:`.synth`, :mod:`.mixtures`, :mod:`.card`, :mod:`.report`, :mod:`.docstore`
(intermediate JSONL), :mod:`.parallel` (ordered multiprocess map), :mod:`.executor` (local
processes or Ray tasks), :mod:`.partitions` (resumable partition tasks), :mod:`.steps` (the step
functions), :mod:`.runner` (order, resume, report).
"""

DOC_KEYS = ("id", "source", "loc", "lang", "text", "meta")
LANGS = ("zh", "en", "other")
