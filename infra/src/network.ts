import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

export const AZ_COUNT = 2;

export interface Network {
    vpc: aws.ec2.Vpc;
    /** One per AZ: the ALB and the NAT gateway. */
    publicSubnets: aws.ec2.Subnet[];
    /** One per AZ: tasks, RDS, Amazon MQ; outbound through the NAT gateway. */
    privateSubnets: aws.ec2.Subnet[];
}

/**
 * A VPC over two AZs: a public subnet (internet gateway) and a private subnet
 * (NAT gateway) in each. With `natPerAz`, each AZ has its own NAT gateway and
 * its private subnet goes out through it; otherwise a single NAT gateway (in
 * the first AZ) keeps the bill small, and outbound traffic of both private
 * subnets depends on that AZ.
 */
export function createNetwork(
    prefix: string,
    tags: Record<string, string>,
    natPerAz: boolean,
    provider: aws.Provider,
): Network {
    const azs = aws.getAvailabilityZonesOutput({ state: "available" }, { provider });
    const az = (i: number) =>
        azs.names.apply((names) => {
            if (names.length < AZ_COUNT) {
                throw new Error(`the region has ${names.length} available AZs, ${AZ_COUNT} needed`);
            }
            return names[i];
        });

    const vpc = new aws.ec2.Vpc("vpc", {
        cidrBlock: "10.0.0.0/16",
        enableDnsSupport: true,
        enableDnsHostnames: true,
        tags: { ...tags, Name: prefix },
    });

    const igw = new aws.ec2.InternetGateway("igw", { vpcId: vpc.id, tags: { ...tags, Name: prefix } });
    const publicRoutes = new aws.ec2.RouteTable("public", {
        vpcId: vpc.id,
        routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: igw.id }],
        tags: { ...tags, Name: `${prefix}-public` },
    });

    const publicSubnets: aws.ec2.Subnet[] = [];
    const privateSubnets: aws.ec2.Subnet[] = [];
    for (let i = 0; i < AZ_COUNT; i++) {
        const subnet = new aws.ec2.Subnet(`public-${i}`, {
            vpcId: vpc.id,
            availabilityZone: az(i),
            cidrBlock: `10.0.${i}.0/24`,
            mapPublicIpOnLaunch: true,
            tags: { ...tags, Name: `${prefix}-public-${i}`, tier: "public" },
        });
        new aws.ec2.RouteTableAssociation(`public-${i}`, { subnetId: subnet.id, routeTableId: publicRoutes.id });
        publicSubnets.push(subnet);
    }

    // The first AZ's NAT gateway and route table keep the names they had when
    // there was only one, so that turning natPerAz on adds the second AZ's
    // without replacing the first.
    const suffix = (i: number) => (i === 0 ? "" : `-${i}`);
    const privateRouteTables: aws.ec2.RouteTable[] = [];
    for (let i = 0; i < (natPerAz ? AZ_COUNT : 1); i++) {
        const natIp = new aws.ec2.Eip(`nat${suffix(i)}`, { domain: "vpc", tags: { ...tags, Name: `${prefix}-nat${suffix(i)}` } });
        const nat = new aws.ec2.NatGateway(
            `nat${suffix(i)}`,
            { allocationId: natIp.id, subnetId: publicSubnets[i].id, tags: { ...tags, Name: `${prefix}${suffix(i)}` } },
            { dependsOn: [igw] },
        );
        privateRouteTables.push(
            new aws.ec2.RouteTable(`private${suffix(i)}`, {
                vpcId: vpc.id,
                routes: [{ cidrBlock: "0.0.0.0/0", natGatewayId: nat.id }],
                tags: { ...tags, Name: `${prefix}-private${suffix(i)}` },
            }),
        );
    }
    for (let i = 0; i < AZ_COUNT; i++) {
        const subnet = new aws.ec2.Subnet(`private-${i}`, {
            vpcId: vpc.id,
            availabilityZone: az(i),
            cidrBlock: `10.0.${10 + i}.0/24`,
            mapPublicIpOnLaunch: false,
            tags: { ...tags, Name: `${prefix}-private-${i}`, tier: "private" },
        });
        const routes = privateRouteTables[natPerAz ? i : 0];
        new aws.ec2.RouteTableAssociation(`private-${i}`, { subnetId: subnet.id, routeTableId: routes.id });
        privateSubnets.push(subnet);
    }

    return { vpc, publicSubnets, privateSubnets };
}

export const ids = (subnets: aws.ec2.Subnet[]): pulumi.Output<string>[] => subnets.map((s) => s.id);
