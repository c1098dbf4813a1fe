//! The adaptive heartbeat (the seed's scheme): each device gets an interval within
//! [`HeartbeatPolicy::min`, `max`]; a heartbeat that arrives in time is a success and moves
//! the interval up by one step, a connection lost to a heartbeat timeout (NAT dropped it) is
//! a failure and moves it down by one step. The interval is remembered per device across
//! reconnects (the sessions layer stores it), so a phone behind an aggressive NAT settles
//! on what its network allows and one on a tolerant network saves battery.
//!
//! Pure policy, no clock and no I/O.

/// The bounds and step of the adaptive interval, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// The shortest interval.
    pub min: u32,
    /// The longest interval.
    pub max: u32,
    /// How far one success or failure moves the interval.
    pub step: u32,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        HeartbeatPolicy {
            min: 60,
            max: 300,
            step: 30,
        }
    }
}

impl HeartbeatPolicy {
    /// The interval for a device never seen before: the minimum, the one every NAT allows.
    pub(crate) fn initial(&self) -> u32 {
        self.min
    }

    /// `current` clamped into the bounds (e.g. an interval stored under older bounds).
    pub(crate) fn clamp(&self, current: u32) -> u32 {
        current.clamp(self.min, self.max)
    }

    /// The interval after a heartbeat arrived in time.
    pub(crate) fn on_success(&self, current: u32) -> u32 {
        self.clamp(current.saturating_add(self.step))
    }

    /// The interval after a connection was lost to a heartbeat timeout.
    pub(crate) fn on_failure(&self, current: u32) -> u32 {
        self.clamp(current.saturating_sub(self.step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_by_steps_within_bounds() {
        let p = HeartbeatPolicy::default();
        let mut i = p.initial();
        assert_eq!(i, 60);
        let mut seen = vec![i];
        for _ in 0..10 {
            i = p.on_success(i);
            seen.push(i);
        }
        assert_eq!(
            &seen[..10],
            &[60, 90, 120, 150, 180, 210, 240, 270, 300, 300]
        );
        assert_eq!(p.on_failure(300), 270);
        assert_eq!(p.on_failure(60), 60);
        assert_eq!(p.clamp(1000), 300);
        assert_eq!(p.clamp(5), 60);
    }
}
