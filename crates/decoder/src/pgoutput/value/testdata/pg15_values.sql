-- Regenerates pg15_values.tsv: Postgres's own text and binary (send, hex) output of each type,
-- 'oid<TAB>text<TAB>hex' per line in COPY text format. Run against a scratch database:
--   psql -X -q -f pg15_values.sql | grep -P '^\d+\t' > pg15_values.tsv
SET extra_float_digits = 3; SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = 'UTC';
SELECT setseed(0.42);
CREATE TEMP TABLE c(oid oid, t text);
-- integers
INSERT INTO c SELECT 21, v::int2::text FROM unnest(ARRAY[-32768, 32767, 0, -1, 1]) v;
INSERT INTO c SELECT 23, v::text FROM unnest(ARRAY[-2147483648, 2147483647, 0, 42]) v;
INSERT INTO c SELECT 20, v::text FROM unnest(ARRAY[-9223372036854775808, 9223372036854775807, 0, -7]) v;
INSERT INTO c SELECT 26, v::oid::text FROM unnest(ARRAY[0, 4294967295, 16384]) v;
-- bool::text is 'true' (a cast); the output function, which pgoutput uses, prints 't'.
INSERT INTO c SELECT 16, format('%s', v) FROM unnest(ARRAY[true, false]) v;
-- floats: wide magnitudes, both signs, specials
INSERT INTO c SELECT 701, ((random() - 0.5) * 10 ^ (random() * 600 - 300))::float8::text FROM generate_series(1, 400);
INSERT INTO c SELECT 701, (round((random() - 0.5) * 10 ^ (random() * 20)))::float8::text FROM generate_series(1, 100);
INSERT INTO c SELECT 701, (round(random() * 1e6) / 10 ^ (random() * 10)::int)::float8::text FROM generate_series(1, 100);
INSERT INTO c SELECT 701, v::float8::text FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '-0', '0', '1e15', '1e14', '1e-4', '1e-5', '1.7976931348623157e308', '5e-324', '2.2250738585072014e-308', '0.1', '123456789012345678']) v;
INSERT INTO c SELECT 700, ((random() - 0.5) * 10 ^ (random() * 70 - 35))::float4::text FROM generate_series(1, 300);
INSERT INTO c SELECT 700, (round(random() * 1e7) / 10 ^ (random() * 8)::int)::float4::text FROM generate_series(1, 100);
INSERT INTO c SELECT 700, v::float4::text FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '-0', '1e6', '100000', '3.4028235e38', '1e-45', '1.17549435e-38']) v;
-- numeric
INSERT INTO c SELECT 1700, round(((random() - 0.5) * 10 ^ (random() * 40 - 20))::numeric, (random() * 30)::int)::text FROM generate_series(1, 200);
INSERT INTO c SELECT 1700, v::numeric::text FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '0', '0.000', '-0.5', '1e100', '123456789012345678901234567890.000000000000000000001', '1.5e-20']) v;
INSERT INTO c SELECT 1700, (2::numeric ^ 200)::text;
-- dates: whole range incl. BC
INSERT INTO c SELECT 1082, ('4714-11-24 BC'::date + (random() * 2147483493)::int)::text FROM generate_series(1, 100);
INSERT INTO c SELECT 1082, ('0001-01-01'::date + (random() * 1500000 - 750000)::int)::text FROM generate_series(1, 100);
INSERT INTO c SELECT 1082, v::date::text FROM unnest(ARRAY['infinity', '-infinity', '4714-11-24 BC', '5874897-12-31', '0001-01-01', '0001-12-31 BC', '2000-02-29']) v;
-- times
INSERT INTO c SELECT 1083, ('00:00'::time + (random() * 86400e6)::bigint * '1 microsecond'::interval)::text FROM generate_series(1, 100);
INSERT INTO c SELECT 1083, v::time::text FROM unnest(ARRAY['24:00:00', '00:00:00', '23:59:59.999999', '12:00:00.5']) v;
INSERT INTO c SELECT 1266, (('00:00'::time + (random() * 86400e6)::bigint * '1 microsecond'::interval)::text || to_char((random() * 30 - 15)::int, 'S00') || ':' || lpad(((random() * 3)::int * 15)::text, 2, '0'))::timetz::text FROM generate_series(1, 60);
INSERT INTO c SELECT 1266, v::timetz::text FROM unnest(ARRAY['12:00:00+05:30', '12:00:00-03:00:15', '00:00:00+00', '23:59:59.999999-15:59:59', '24:00:00+15:59']) v;
-- timestamps
INSERT INTO c SELECT 1114, ('4714-11-24 00:00:00 BC'::timestamp + (random() * 108000000)::int * '1 day'::interval + (random() * 86400e6)::bigint * '1 microsecond'::interval)::text FROM generate_series(1, 50);
INSERT INTO c SELECT 1114, ('2000-01-01'::timestamp + ((random() - 0.5) * 2e17)::bigint * '1 microsecond'::interval)::text FROM generate_series(1, 150);
INSERT INTO c SELECT 1114, v::timestamp::text FROM unnest(ARRAY['infinity', '-infinity', '4714-11-24 00:00:00 BC', '294276-12-31 23:59:59.999999', '0044-03-15 12:00:00 BC', '1970-01-01 00:00:00']) v;
INSERT INTO c SELECT 1184, ('2000-01-01'::timestamptz + ((random() - 0.5) * 2e17)::bigint * '1 microsecond'::interval)::text FROM generate_series(1, 150);
INSERT INTO c SELECT 1184, v::timestamptz::text FROM unnest(ARRAY['infinity', '-infinity', '4714-11-24 00:00:00+00 BC', '294276-12-31 23:59:59.999999+00', '0044-03-15 12:00:00+00 BC', '2024-06-01 12:00:00+05:30']) v;
-- intervals: mixed signs (not the all-maximum one: Postgres 17 prints that as 'infinity')
INSERT INTO c SELECT 1186, ((((random() - 0.5) * 1000)::int || ' mons')::interval * (random() < 0.7)::int
    + (((random() - 0.5) * 1000)::int || ' days')::interval * (random() < 0.7)::int
    + ((random() - 0.5) * 1e12)::bigint * '1 microsecond'::interval * (random() < 0.7)::int)::text FROM generate_series(1, 300);
INSERT INTO c SELECT 1186, v::interval::text FROM unnest(ARRAY['0', '1 year 2 mons -3 days 4:05:06.789', '-0.000001 s', '-1 year -2 mons', '1 mon', '1 day', '-1 day +1 s', '12 mons', '-12 mons', '178956970 years 7 mons 2147483647 days 2562047788:00:54.775806', '-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807']) v;
-- uuid, bytea, json
INSERT INTO c SELECT 2950, md5(i::text)::uuid::text FROM generate_series(1, 20) i;
INSERT INTO c SELECT 17, decode(md5(i::text) || md5((i * 7)::text), 'hex')::text FROM generate_series(1, 20) i;
INSERT INTO c SELECT 17, v::bytea::text FROM unnest(ARRAY['', '\x00ff', 'abc']) v;
INSERT INTO c SELECT 114, v::json::text FROM unnest(ARRAY['{"a": [1, 2.50, null]}', '"x\u0001y"', ' [ 1 , 2 ] ']) v;
INSERT INTO c SELECT 3802, v::jsonb::text FROM unnest(ARRAY['{"b": 1, "a": [1, 2.50, null]}', '"x\u0001y"', ' [ 1 , 2 ] ', '{"k": "ü\n\t\"q\""}']) v;
-- text-ish
INSERT INTO c SELECT 25, v FROM unnest(ARRAY['', 'hello', E'tab\there', E'new\nline', 'ü€😀', 'a"b\c']) v;
INSERT INTO c SELECT 1042, v::char(5)::text FROM unnest(ARRAY['ab', 'abcde', '']) v;
INSERT INTO c SELECT 1043, v::varchar::text FROM unnest(ARRAY['ab', '']) v;
INSERT INTO c SELECT 19, v::name::text FROM unnest(ARRAY['pg_class', 'Mixed Case']) v;
INSERT INTO c SELECT 18, v::text FROM unnest(ARRAY['a'::"char", chr(200)::"char", ''::"char"]) v;
-- arrays
INSERT INTO c SELECT 1009, v::text[]::text FROM unnest(ARRAY[
  '{}', '{a,b}', '{"",NULL,"NULL","null","a b","a\"b","a\\b","{","}",","}', E'{"tab\there","new\nline","x\\fy"}',
  '{{a,b},{c,d}}', '[0:1]={x,y}', '[-3:-2][1:2]={{1,2},{3,4}}', '{ü€,"😀 x"}', E'{"a\\vb"}', '{"  lead","trail  "}']) v;
INSERT INTO c SELECT 1007, v::int4[]::text FROM unnest(ARRAY['{}', '{1,2,3}', '{{1,2},{3,4}}', '{{{1},{2}},{{3},{4}}}', '[0:2]={1,NULL,3}', '{NULL}']) v;
INSERT INTO c SELECT 1005, '{1,-2}'::int2[]::text;
INSERT INTO c SELECT 1016, '{9223372036854775807,-1}'::int8[]::text;
INSERT INTO c SELECT 1022, '{1e15,0.1,NaN,-Infinity,-0,1.5e-7}'::float8[]::text;
INSERT INTO c SELECT 1021, '{1e6,0.1,NaN}'::float4[]::text;
INSERT INTO c SELECT 1231, '{1.50,NaN,-0.001,Infinity}'::numeric[]::text;
INSERT INTO c SELECT 1000, '{t,f,NULL}'::bool[]::text;
INSERT INTO c SELECT 1001, ARRAY['\x00ff'::bytea, ''::bytea, NULL]::text;
INSERT INTO c SELECT 2951, ARRAY[md5('1')::uuid, md5('2')::uuid]::text;
INSERT INTO c SELECT 1182, '{2024-01-01,infinity,"0044-03-15 BC"}'::date[]::text;
INSERT INTO c SELECT 1183, '{12:00:00,24:00:00,00:00:00.5}'::time[]::text;
INSERT INTO c SELECT 1270, '{12:00:00+05:30,00:00:00-01}'::timetz[]::text;
INSERT INTO c SELECT 1115, '{"2024-01-01 10:00:00",infinity,"0044-03-15 12:00:00 BC"}'::timestamp[]::text;
INSERT INTO c SELECT 1185, '{"2024-01-01 10:00:00+00",-infinity}'::timestamptz[]::text;
INSERT INTO c SELECT 1187, '{"1 day",00:00:00,"-1 years +00:00:01"}'::interval[]::text;
INSERT INTO c SELECT 199, ARRAY['{"a": 1}'::json, '[1,2]'::json]::text;
INSERT INTO c SELECT 3807, ARRAY['{"a": 1}'::jsonb, '"s p"'::jsonb, 'null'::jsonb]::text;
INSERT INTO c SELECT 1002, ARRAY['a'::"char", chr(200)::"char", ','::"char"]::text;
INSERT INTO c SELECT 1003, '{pg_class,"a b"}'::name[]::text;
INSERT INTO c SELECT 1014, '{"ab ",cd}'::char(3)[]::text;
INSERT INTO c SELECT 1015, '{"",x}'::varchar[]::text;
INSERT INTO c SELECT 1028, '{1,4294967295}'::oid[]::text;
-- Each value's binary (send) form too, as hex.
CREATE FUNCTION pg_temp.send_hex(o oid, t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT encode(%s(%L::%I), ''hex'')',
                 (SELECT typsend FROM pg_type WHERE oid = o), t, (SELECT typname FROM pg_type WHERE oid = o))
    INTO r;
  RETURN r;
END $$;
COPY (SELECT oid, t, pg_temp.send_hex(oid, t) FROM c) TO STDOUT;
