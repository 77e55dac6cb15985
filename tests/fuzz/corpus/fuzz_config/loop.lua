local t = {} repeat t[#t % 10 + 1] = true until false
