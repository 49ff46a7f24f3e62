//! How many bits a blind index keeps: the trade between false positives and
//! leakage, following CipherSweet's planner.
//!
//! With `R` rows and an index of `L` bits (plus the bits of other indexes on
//! the same column, which an attacker can intersect), about
//! `C = R / 2^L` rows share each index value (the *coincidence count*). With
//! `C >= 2` an index value never points to a single row, so equal index values
//! do not prove equal plaintexts; with `C <= sqrt(R)` a lookup reads a small
//! fraction of the table. Hence
//!
//! ```text
//! L_min = ceil(log2(R) / 2)          (C <= sqrt(R): few false positives)
//! L_max = floor(log2(R)) - 1         (C >= 2: every value has company)
//! ```
//!
//! minus the bits of other indexes on the same column. For 1,000,000 rows:
//! 10 to 18 bits (977 to 3.8 rows per lookup); for 10,000 rows: 7 to 12. The
//! recommendation is `L_max`: the fewest false positives that still hide
//! which rows are equal. Tables much smaller than their expected size (a new
//! tenant) leak more: plan for the smallest population an index will serve.

use crate::error::{Error, Result};

/// The expected rows assumed when an index names neither `bits` nor
/// `expected_rows`: 1,000,000 (18 bits).
pub const DEFAULT_EXPECTED_ROWS: u64 = 1_000_000;

/// The safe range of bits for an index, and the recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitsPlan {
    /// Fewest bits: more would make lookups read more than `sqrt(rows)` rows.
    pub min: u16,
    /// Most bits that keep at least two rows per index value.
    pub max: u16,
    /// What to use: `max`.
    pub recommended: u16,
}

/// The safe bit range for an index over `rows` rows, when other indexes on the
/// same column already keep `existing_bits` bits. Refuses tables below 16 rows
/// (no length is safe there) and columns whose other indexes leave no room.
pub fn plan(rows: u64, existing_bits: u16) -> Result<BitsPlan> {
    if rows < 16 {
        return Err(Error::Config(format!(
            "a blind index over {rows} expected rows cannot be both useful and safe: plan for at least 16 rows, or use a full-length index and accept that it reveals equality"
        )));
    }
    let log2 = (rows as f64).log2();
    let min = (log2 / 2.0).ceil() as i32 - i32::from(existing_bits);
    let max = log2.floor() as i32 - 1 - i32::from(existing_bits);
    if max < 1 {
        return Err(Error::Config(format!(
            "no safe length for another blind index over {rows} rows: the column's other indexes already keep {existing_bits} bits"
        )));
    }
    let min = min.max(1) as u16;
    let max = max as u16;
    Ok(BitsPlan {
        min,
        max,
        recommended: max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_examples() {
        assert_eq!(
            plan(1_000_000, 0).unwrap(),
            BitsPlan {
                min: 10,
                max: 18,
                recommended: 18
            }
        );
        assert_eq!(
            plan(10_000, 0).unwrap(),
            BitsPlan {
                min: 7,
                max: 12,
                recommended: 12
            }
        );
        // CipherSweet's planner vectors, with its `C >= 2` upper bound.
        assert_eq!(
            (plan(1 << 16, 0).unwrap().min, plan(1 << 16, 0).unwrap().max),
            (8, 15)
        );
        assert_eq!(
            (plan(1 << 31, 0).unwrap().min, plan(1 << 31, 0).unwrap().max),
            (16, 30)
        );
        assert_eq!(
            (plan(1 << 8, 0).unwrap().min, plan(1 << 8, 0).unwrap().max),
            (4, 7)
        );
        assert_eq!(
            (plan(1 << 16, 8).unwrap().min, plan(1 << 16, 8).unwrap().max),
            (1, 7)
        );
        assert_eq!(plan(1_000_000, 12).unwrap().max, 6);
        assert!(plan(15, 0).is_err());
        assert!(plan(1 << 10, 9).is_err());
        // The coincidence count at the recommendation is at least 2.
        for rows in [16_u64, 100, 1_000, 54_321, 1_000_000, 1 << 40] {
            let p = plan(rows, 0).unwrap();
            assert!(
                rows as f64 / 2f64.powi(i32::from(p.recommended)) >= 2.0,
                "{rows}"
            );
            assert!(p.min <= p.max);
        }
    }
}
