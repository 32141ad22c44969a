//! What an L7 proxy saw: HTTP, DNS and Kafka.

use serde::{Deserialize, Serialize};

use super::enums::L7FlowType;
use super::{is_zero_i32, is_zero_u32, is_zero_u64};

/// An HTTP header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpHeader {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

/// An HTTP request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Http {
    /// Status code (responses).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub code: u32,
    /// Method.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// `HTTP/1.1`, `HTTP/2`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
}

/// A DNS query or answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// The name looked up (`example.com.`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Addresses in the answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// TTL of the answer.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// CNAMEs in the answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// Where it was observed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub observation_source: String,
    /// Response code.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rcode: u32,
    /// Query types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    /// Answer record types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
}

impl Dns {
    /// The name of response code `rcode`, as Hubble prints it (`None`: not
    /// one of the common six).
    pub fn rcode_name(rcode: u32) -> Option<&'static str> {
        Some(match rcode {
            0 => "No Error",
            1 => "Format Error",
            2 => "Server Failure",
            3 => "Non-Existent Domain",
            4 => "Not Implemented",
            5 => "Query Refused",
            _ => return None,
        })
    }
}

/// A Kafka request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kafka {
    /// Error code.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub error_code: i32,
    /// API version.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub api_version: i32,
    /// API key (`produce`, `fetch`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_key: String,
    /// Correlation id.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub correlation_id: i32,
    /// Topic.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub topic: String,
}

/// What an L7 proxy saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Layer7 {
    /// Request, response or sample.
    #[serde(rename = "type", skip_serializing_if = "L7FlowType::is_zero")]
    pub kind: L7FlowType,
    /// Response latency.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub latency_ns: u64,
    /// DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    /// Kafka.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Kafka>,
}
