"""A spy on the stage runner's ``api.train`` calls, shared by the sequence-scheme tests."""

from kdforge import api, stages


class StageSpy:
    """Wraps ``api.train`` as the stage runner calls it: records ``(stage, resumed)`` for
    each call and can interrupt one stage after its first epoch, as a crash would.

    Args:
        interrupt: the stage name to stop once.
        sequence: calls for a config whose scheme has this name (the sequence itself,
            e.g. via ``api.resume``) pass through unrecorded.
    """

    class Stop(Exception):
        pass

    def __init__(self, monkeypatch, interrupt: str | None = None,
                 sequence: str | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.interrupt, self.sequence = interrupt, sequence
        self.original = api.train
        monkeypatch.setattr(stages.api, "train", self)

    def __call__(self, cfg, **kw):
        if self.sequence is not None and cfg.scheme is not None and \
                cfg.scheme.name == self.sequence:
            return self.original(cfg, **kw)
        self.calls.append((cfg.name, kw.get("resume", False)))
        if cfg.name == self.interrupt:
            self.interrupt = None

            def stop(trainer, record):
                raise self.Stop

            return self.original(cfg, callbacks=[stop], **kw)
        return self.original(cfg, **kw)
