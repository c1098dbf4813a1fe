//! The edge node list (goim's balancer): the edges a client should try, in order.
//!
//! Live edges only (the caller filters). Nearest region first: edges within
//! [`SAME_REGION_KM`] of the nearest edge (great-circle distance from the client) form the
//! first region, the next band of that width the second, and so on. Within a region, higher
//! weight first (weight 0 means draining, so last), then fewer connections per unit of
//! weight, then id. Without a position, every edge is in one region. A pure function over a
//! snapshot.

use std::cmp::Ordering;

/// Edges within this distance of each other (from the client) count as one region.
pub(crate) const SAME_REGION_KM: f64 = 500.0;
const EARTH_RADIUS_KM: f64 = 6371.0;

/// What the balancer knows of an edge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EdgeInfo {
    /// The edge's id.
    pub(crate) id: String,
    /// Region name (informational).
    pub(crate) region: String,
    /// Latitude, degrees.
    pub(crate) lat: f64,
    /// Longitude, degrees.
    pub(crate) lon: f64,
    /// Relative capacity (0 means drain: listed last).
    pub(crate) weight: u32,
    /// Open client connections.
    pub(crate) connections: u64,
}

/// Great-circle distance in kilometres (haversine).
pub(crate) fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().atan2((1.0 - a).sqrt())
}

/// Orders `edges` for a client at `position` (lat, lon), nearest region first.
pub(crate) fn order(mut edges: Vec<EdgeInfo>, position: Option<(f64, f64)>) -> Vec<EdgeInfo> {
    let distance =
        |e: &EdgeInfo| position.map_or(0.0, |(lat, lon)| distance_km(lat, lon, e.lat, e.lon));
    let nearest = edges.iter().map(distance).fold(f64::INFINITY, f64::min);
    // Bands of SAME_REGION_KM counted from the nearest edge: band 0 is the nearest region.
    let band = |e: &EdgeInfo| ((distance(e) - nearest) / SAME_REGION_KM) as u64;
    let load = |e: &EdgeInfo| e.connections as f64 / f64::from(e.weight.max(1));
    edges.sort_by(|a, b| {
        band(a)
            .cmp(&band(b))
            .then_with(|| b.weight.cmp(&a.weight))
            .then_with(|| load(a).partial_cmp(&load(b)).unwrap_or(Ordering::Equal))
            .then_with(|| a.id.cmp(&b.id))
    });
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, lat: f64, lon: f64, weight: u32, connections: u64) -> EdgeInfo {
        EdgeInfo {
            id: id.into(),
            region: String::new(),
            lat,
            lon,
            weight,
            connections,
        }
    }

    #[test]
    fn distance_is_right_for_known_cities() {
        // Beijing - Shanghai is about 1,070 km.
        let d = distance_km(39.9042, 116.4074, 31.2304, 121.4737);
        assert!((1050.0..1090.0).contains(&d), "{d}");
        assert!(distance_km(1.0, 2.0, 1.0, 2.0) < 1e-9);
    }

    #[test]
    fn nearest_region_then_weight_then_fewest_connections() {
        let beijing = (39.9, 116.4);
        let edges = vec![
            edge("shanghai", 31.2, 121.5, 100, 0),
            edge("beijing-a", 39.9, 116.3, 100, 500),
            edge("beijing-b", 40.0, 116.5, 100, 100),
            edge("beijing-big", 39.8, 116.4, 200, 900),
            edge("beijing-drain", 39.9, 116.4, 0, 0),
            edge("tokyo", 35.7, 139.7, 500, 0),
        ];
        let ids: Vec<String> = order(edges, Some(beijing))
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            [
                "beijing-big",
                "beijing-b",
                "beijing-a",
                "beijing-drain",
                "shanghai",
                "tokyo"
            ]
        );
    }

    #[test]
    fn without_a_position_weight_and_load_decide() {
        let edges = vec![edge("a", 0.0, 0.0, 1, 10), edge("b", 50.0, 50.0, 1, 5)];
        let ids: Vec<String> = order(edges, None).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["b", "a"]);
    }
}
