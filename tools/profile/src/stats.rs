//! Summary statistics of repeated measurements, the one place every benchmark and
//! `msh bench` takes them from.

/// The median of `values`, which it sorts: the middle value, or the mean of the two
/// middle ones for an even count.
///
/// # Panics
/// When `values` is empty.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "the median of no values");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    #[should_panic(expected = "the median of no values")]
    fn no_values_have_no_median() {
        median(&mut []);
    }
}
