//! Linear parameter ramps of a fixed length, advanced per sample (so the result does not depend
//! on how a stream is cut into blocks), landing exactly on the target.

/// A value moving linearly to its target over a fixed number of samples.
#[derive(Clone, Copy, Debug)]
pub struct Ramp {
    current: f32,
    target: f32,
    step: f32,
    left: u32,
    length: u32,
}

impl Ramp {
    /// A ramp at `value` that takes `length` samples (at least 1) to reach a new target.
    pub fn new(value: f32, length: u32) -> Ramp {
        Ramp {
            current: value,
            target: value,
            step: 0.0,
            left: 0,
            length: length.max(1),
        }
    }

    /// Jumps to `value` (no ramp).
    pub fn jump(&mut self, value: f32) {
        *self = Ramp::new(value, self.length);
    }

    /// Starts ramping to `target` unless it is already the target.
    pub fn set(&mut self, target: f32) {
        if target != self.target {
            self.target = target;
            self.left = self.length;
            self.step = (target - self.current) / self.length as f32;
        }
    }

    /// Advances one sample and returns the new value.
    #[inline]
    pub fn next(&mut self) -> f32 {
        if self.left > 0 {
            self.left -= 1;
            self.current = if self.left == 0 {
                self.target
            } else {
                self.current + self.step
            };
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lands_exactly_and_holds() {
        let mut r = Ramp::new(0.3, 7);
        r.set(0.0);
        let v: Vec<f32> = (0..10).map(|_| r.next()).collect();
        assert!(v[..6].iter().all(|&x| x > 0.0));
        assert_eq!(v[6], 0.0);
        assert!(v[6..].iter().all(|&x| x == 0.0));
        r.set(0.0);
        assert_eq!(r.next(), 0.0);
    }
}
