//! The OpenLineage run event (spec 2-0-2) and the facets Quarry fills in.
//!
//! Written here rather than taken from a crate: the Rust OpenLineage crates
//! are young (0.0.x) and the part Quarry needs is a few serde structs. Each
//! facet carries the `_schemaURL` of the facet version the Python client
//! (`openlineage-python`) builds, which the tests check event by event.

use serde::Serialize;
use serde_json::{Map, Value, json};

pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
pub const PRODUCER: &str = concat!("https://quarry.invalid/quarry/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Start,
    Complete,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    pub event_type: EventType,
    pub event_time: String,
    pub run: Run,
    pub job: Job,
    pub inputs: Vec<Dataset>,
    pub outputs: Vec<Dataset>,
    pub producer: &'static str,
    #[serde(rename = "schemaURL")]
    pub schema_url: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub run_id: String,
    pub facets: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub namespace: String,
    pub name: String,
    pub facets: Map<String, Value>,
}

/// An input or output dataset; `io_facets` go out as `inputFacets` or
/// `outputFacets` by the list the dataset is in.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    pub namespace: String,
    pub name: String,
    pub facets: Map<String, Value>,
    #[serde(rename = "inputFacets", skip_serializing_if = "Option::is_none")]
    pub input_facets: Option<Map<String, Value>>,
    #[serde(rename = "outputFacets", skip_serializing_if = "Option::is_none")]
    pub output_facets: Option<Map<String, Value>>,
}

impl RunEvent {
    /// An event of `run_id` of the job `namespace`/`name` (a batch job
    /// of Quarry), at the current time.
    pub fn new(event_type: EventType, run_id: &str, namespace: &str, name: &str) -> Self {
        let mut job_facets = Map::new();
        job_facets.insert(
            "jobType".into(),
            facet(
                "2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
                json!({"processingType": "BATCH", "integration": "QUARRY", "jobType": "JOB"}),
            ),
        );
        Self {
            event_type,
            event_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            run: Run {
                run_id: run_id.to_string(),
                facets: Map::new(),
            },
            job: Job {
                namespace: namespace.to_string(),
                name: name.to_string(),
                facets: job_facets,
            },
            inputs: Vec::new(),
            outputs: Vec::new(),
            producer: PRODUCER,
            schema_url: SCHEMA_URL,
        }
    }

    /// The FAIL event's error.
    pub fn with_error(mut self, message: &str) -> Self {
        self.run.facets.insert(
            "errorMessage".into(),
            facet(
                "1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
                json!({"message": message, "programmingLanguage": "Rust"}),
            ),
        );
        self
    }
}

impl Dataset {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            facets: Map::new(),
            input_facets: None,
            output_facets: None,
        }
    }

    /// The columns, by name (their types differ from file to file: a CSV
    /// has none).
    pub fn with_schema<'a>(mut self, columns: impl IntoIterator<Item = &'a str>) -> Self {
        let fields: Vec<Value> = columns
            .into_iter()
            .map(|name| json!({ "name": name }))
            .collect();
        self.facets.insert(
            "schema".into(),
            facet(
                "1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
                json!({ "fields": fields }),
            ),
        );
        self
    }

    /// Rows (and bytes, when known) read from an input.
    pub fn with_rows_read(mut self, rows: u64, bytes: Option<u64>) -> Self {
        let mut metrics = json!({"rowCount": rows, "columnMetrics": {}});
        if let Some(b) = bytes {
            metrics["bytes"] = b.into();
        }
        self.input_facets.get_or_insert_with(Map::new).insert(
            "dataQualityMetrics".into(),
            facet(
                "1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet",
                metrics,
            ),
        );
        self
    }

    /// Rows a run wrote to an output.
    pub fn with_rows_written(mut self, rows: u64) -> Self {
        self.output_facets.get_or_insert_with(Map::new).insert(
            "outputStatistics".into(),
            facet(
                "1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                json!({ "rowCount": rows }),
            ),
        );
        self
    }

    /// Checks and whether each held, as `(name, success)`.
    pub fn with_assertions<'a>(
        mut self,
        checks: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Self {
        let assertions: Vec<Value> = checks
            .into_iter()
            .map(|(name, success)| json!({"assertion": name, "success": success}))
            .collect();
        self.facets.insert(
            "dataQualityAssertions".into(),
            facet(
                "1-1-0/DataQualityAssertionsDatasetFacet.json#/$defs/DataQualityAssertionsDatasetFacet",
                json!({ "assertions": assertions }),
            ),
        );
        self
    }
}

/// A facet: its fields plus the producer and the facet schema's URL.
fn facet(schema: &str, fields: Value) -> Value {
    let mut v = fields;
    v["_producer"] = PRODUCER.into();
    v["_schemaURL"] = format!("https://openlineage.io/spec/facets/{schema}").into();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_the_spec_shape() {
        let mut e = RunEvent::new(
            EventType::Fail,
            "01a23c45-47ec-7231-8c8b-a749a1043847",
            "quarry",
            "pipeline",
        )
        .with_error("boom");
        e.inputs.push(
            Dataset::new("file", "/data/t.csv")
                .with_schema(["user_id"])
                .with_rows_read(3, Some(10)),
        );
        e.outputs
            .push(Dataset::new("sqlite:///w.db", "trades").with_rows_written(2));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["eventType"], "FAIL");
        assert_eq!(v["schemaURL"], SCHEMA_URL);
        assert_eq!(v["run"]["facets"]["errorMessage"]["message"], "boom");
        assert_eq!(
            v["inputs"][0]["inputFacets"]["dataQualityMetrics"]["rowCount"],
            3
        );
        assert!(v["inputs"][0].get("outputFacets").is_none());
        assert_eq!(
            v["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            2
        );
        assert!(v["eventTime"].as_str().unwrap().ends_with('Z'));
    }
}
