"""Checks OpenLineage events against the classes of the openlineage-python
client: each event (one JSON object per line of FILE) is rebuilt from those
classes, facet by facet, and must serialise back to what Quarry sent, facet
schema URLs included. An unknown facet, a missing field or a value the
classes refuse (a run id that is no UUID, a bad time) fails.

usage: lineage_events.py FILE      prints the number of events checked
"""
import json
import sys

from openlineage.client import event_v2 as ev
from openlineage.client.facet_v2 import (
    data_quality_assertions_dataset as dqa,
    data_quality_metrics_input_dataset as dqm,
    error_message_run as em,
    job_type_job as jt,
    output_statistics_output_dataset as ost,
    schema_dataset as sd,
)
from openlineage.client.serde import Serde


def fields(d):
    """A facet's own fields (without _producer and _schemaURL)."""
    return {k: v for k, v in d.items() if not k.startswith("_")}


FACETS = {
    "schema": lambda d: sd.SchemaDatasetFacet(
        fields=[sd.SchemaDatasetFacetFields(**f) for f in d["fields"]]
    ),
    "dataQualityAssertions": lambda d: dqa.DataQualityAssertionsDatasetFacet(
        assertions=[dqa.Assertion(**a) for a in d["assertions"]]
    ),
    "dataQualityMetrics": lambda d: dqm.DataQualityMetricsInputDatasetFacet(**d),
    "outputStatistics": lambda d: ost.OutputStatisticsOutputDatasetFacet(**d),
    "errorMessage": lambda d: em.ErrorMessageRunFacet(**d),
    "jobType": lambda d: jt.JobTypeJobFacet(**d),
}


def facets(d):
    return {name: FACETS[name](fields(f)) for name, f in (d or {}).items()}


def rebuild(e):
    return ev.RunEvent(
        eventType=ev.RunState[e["eventType"]],
        eventTime=e["eventTime"],
        producer=e["producer"],
        run=ev.Run(runId=e["run"]["runId"], facets=facets(e["run"].get("facets"))),
        job=ev.Job(
            namespace=e["job"]["namespace"],
            name=e["job"]["name"],
            facets=facets(e["job"].get("facets")),
        ),
        inputs=[
            ev.InputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=facets(d.get("facets")),
                inputFacets=facets(d.get("inputFacets")),
            )
            for d in e["inputs"]
        ],
        outputs=[
            ev.OutputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=facets(d.get("facets")),
                outputFacets=facets(d.get("outputFacets")),
            )
            for d in e["outputs"]
        ],
    )


def normal(v):
    """Drops the producers (the client writes its own) and empty values."""
    if isinstance(v, dict):
        return {
            k: normal(x)
            for k, x in v.items()
            if k != "_producer" and x not in (None, [], {})
        }
    if isinstance(v, list):
        return [normal(x) for x in v]
    return v


def main():
    with open(sys.argv[1]) as f:
        events = [json.loads(line) for line in f if line.strip()]
    for e in events:
        back = normal(Serde.to_dict(rebuild(e)))
        sent = normal(e)
        if back != sent:
            sys.exit(f"event differs from the client's classes:\nsent  {sent}\nclass {back}")
    print(len(events))


if __name__ == "__main__":
    main()
