"""The shape of the code (issue 22, "One way through"): tables the agent restates agree with the collector's,
frozen values hash."""
import dataclasses

from latkit.agents import agent
from latkit.collector import formats
from latkit.collector.job import Artifact, InputSpec, Job, Settings


def test_agent_format_tables_match_the_collectors():
    assert agent.RUNTIMES == formats.RUNTIMES
    assert agent.RUNTIME_OF_EXTENSION == formats.RUNTIME_OF_EXTENSION
    assert set(agent.FORMAT_OF_RUNTIME) == set(formats.RUNTIMES) == set(agent.LOADERS)
    assert set(formats.EXPORT_FORMAT) == set(formats.RUNTIMES)


def test_artifact_and_job_with_inputs_hash():
    art = Artifact(path="/m/a.pt", sha256="0" * 64, format="torchscript",
                   inputs=({"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"},))
    assert art.inputs == (InputSpec("x", (1, 3, 8, 8)),) and art.inputs[0].to_dict()["shape"] == [1, 3, 8, 8]
    job = Job(art, "local", Settings())
    assert len({art, dataclasses.replace(art)}) == 1 and len({job, dataclasses.replace(job)}) == 1
