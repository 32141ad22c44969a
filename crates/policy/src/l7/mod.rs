//! Placeholder until the matchers land (same session).
pub mod dns {
    pub fn validate_match_name(_s: &str) -> Result<(), String> { Ok(()) }
    pub fn validate_match_pattern(_s: &str) -> Result<(), String> { Ok(()) }
}
pub mod http {
    pub fn compile_regex(_f: &str, p: &str) -> Result<regex::Regex, regex::Error> { regex::Regex::new(p) }
}
pub mod kafka {
    pub fn api_key_from_name(_s: &str) -> Option<i16> { Some(0) }
}
pub fn check_rules(_r: &crate::api::L7Rules) -> Vec<(String, String)> { Vec::new() }
