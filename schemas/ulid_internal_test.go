package schemas

import "testing"

func TestEncodeULID(t *testing.T) {
	var ones [16]byte
	for i := range ones {
		ones[i] = 0xff
	}
	var one [16]byte
	one[15] = 1
	var top [16]byte
	top[0] = 0x80
	tests := []struct {
		in   [16]byte
		want string
	}{
		{[16]byte{}, "00000000000000000000000000"},
		{ones, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"},
		{one, "00000000000000000000000001"},
		{top, "40000000000000000000000000"},
		// The example ULID of the spec, 01ARZ3NDEKTSV4RRFFQ69G5FAV.
		{[16]byte{0x01, 0x56, 0x3e, 0x3a, 0xb5, 0xd3, 0xd6, 0x76, 0x4c, 0x61, 0xef, 0xb9, 0x93, 0x02, 0xbd, 0x5b},
			"01ARZ3NDEKTSV4RRFFQ69G5FAV"},
	}
	for _, tt := range tests {
		if got := encodeULID(tt.in); got != tt.want {
			t.Errorf("encodeULID(%x) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
